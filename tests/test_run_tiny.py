"""The whole loop on the tiny model from the command line: metrics.json's shape and cache reuse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FAST = ["model=tiny", "logger=none", "trainer.max_steps=2", "task.max_train_examples=16", "task.max_eval_examples=8",
        "eval.humaneval.limit=2", "eval.humaneval.max_new_tokens=16", "eval.codesum.limit=2",
        "eval.codesum.max_new_tokens=8", "eval.loss.limit=4", "eval.lm_eval.limit=4"]


def _run(tmp_path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "run.py", *FAST, f"cache.root={tmp_path / 'cache'}",
                           f"hydra.run.dir={tmp_path / name}", *overrides], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tiny_run")
    return tmp_path, _run(tmp_path, "run1")


def test_metrics_json_has_every_variant_and_metric(first_run):
    tmp_path, proc = first_run
    metrics = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert set(metrics["variants"]) == {"base", "specialist/codegen", "specialist/codesum", "mixture", "merged"}
    for name, variant in metrics["variants"].items():
        m = variant["metrics"]
        for key in ("codegen/humaneval_pass@1", "codegen/loss", "codesum/bleu4", "codesum/loss", "aggregate"):
            assert isinstance(m[key], float), (name, key)
        assert 0.0 <= m["codegen/humaneval_pass@1"] <= 1.0 and 0.0 <= m["codesum/bleu4"] <= 100.0
        assert 5.0 < m["codegen/loss"] < 12.0  # a barely trained random model: near ln(49152) = 10.8
        artifact = Path(variant["artifact"])  # every variant is a folder in this run's cache (merged on disk)
        assert artifact.is_dir() and artifact.is_relative_to((tmp_path / "cache").resolve()), (name, artifact)
    assert metrics["objective"] == metrics["variants"]["merged"]["metrics"]["aggregate"]
    assert "| specialist/codegen" in proc.stdout
    assert "a seeded subset of 2 of the 164 HumanEval problems" in proc.stdout  # the table's caption
    assert (tmp_path / "run1" / "analysis" / "pearson_by_layer.png").is_file()
    assert "Recommendation:" in proc.stdout
    for variant in metrics["variants"].values():  # the default retention check (lm-eval, local task)
        assert variant["metrics"]["lm_eval/pydoc_next/acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert variant["metrics"]["lm_eval/pydoc_next/acc_stderr"] >= 0.0
    assert "Forgetting check:" in proc.stdout and "paired bootstrap interval" in proc.stdout


def test_metrics_json_has_intervals_comparisons_and_a_verdict(first_run):
    tmp_path, proc = first_run
    metrics = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    for name, variant in metrics["variants"].items():
        assert set(variant["ci95"]) == set(variant["metrics"]) == set(variant["n"]), name
        for key, value in variant["metrics"].items():
            ci = variant["ci95"][key]
            if key.endswith("_stderr"):
                assert ci is None and variant["n"][key] is None
                continue
            assert ci[0] - 1e-12 <= value <= ci[1] + 1e-12, (name, key, ci, value)
        assert variant["n"]["codegen/humaneval_pass@1"] == 2 and variant["n"]["codegen/loss"] == 4
        assert variant["n"]["aggregate"] == 8  # 4 held-out examples per task (its loss terms), resampled jointly
    rows = {(c["a"], c["b"], c["metric"]): c for c in metrics["comparisons"]}
    for key in (("mixture", "merged", "aggregate"), ("merged", "specialist/codegen", "codegen/humaneval_pass@1"),
                ("specialist/codesum", "base", "codesum/loss"), ("mixture", "base", "lm_eval/pydoc_next/acc")):
        row = rows[key]
        values = metrics["variants"]
        assert row["difference"] == pytest.approx(values[key[0]]["metrics"][key[2]] - values[key[1]]["metrics"][key[2]])
        assert 0.0 < row["p_value"] <= 1.0 and row["ci95"][0] <= row["ci95"][1]
    assert rows[("merged", "specialist/codegen", "codegen/humaneval_pass@1")]["test"] == "exact McNemar"
    verdict = metrics["verdict"]
    assert verdict["winner"] in ("mix", "merge", "not separable") and verdict["best_merge"] == "merged"
    assert (verdict["winner"] == "not separable") == (verdict["ci95"][0] <= 0.0 <= verdict["ci95"][1])
    assert "Verdict: " in proc.stdout and "95% CI" in proc.stdout
    assert " [" in (tmp_path / "run1" / "metrics.md").read_text()  # the table shows intervals


def test_replicates_train_and_cache_every_seed_and_report_per_seed_results(first_run):
    """`replicates=2`: the first seed's models are the cached single-seed run's; the second seed trains its
    own specialists and mixture, merges its own specialists; metrics are the mean over the two seeds."""
    tmp_path, _ = first_run
    proc = _run(tmp_path, "rep", "replicates=2")
    log = (tmp_path / "rep" / "run.log").read_text()
    assert "cache hit: specialist/codegen" in log and "cache hit: mixture" in log
    for label in ("specialist/codegen (seed 1)", "specialist/codesum (seed 1)", "mixture (seed 1)"):
        assert f"cache miss: building {label}" in log, label
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1]
    single = json.loads((tmp_path / "run1" / "metrics.json").read_text())["variants"]
    for name in ("specialist/codegen", "mixture", "merged"):
        variant = metrics["variants"][name]
        assert set(variant["seeds"]) == {"0", "1"} and len(variant["artifact"]) == 2
        assert variant["artifact"][0] != variant["artifact"][1]
        assert variant["seeds"]["0"] == single[name]["metrics"]  # seed 0 is the single-seed run's model
        for key, value in variant["metrics"].items():
            per_seed = [variant["seeds"][s][key] for s in ("0", "1")]
            assert value == pytest.approx(sum(per_seed) / 2)
            assert variant["spread"][key] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2 ** 0.5)
    assert "seeds" not in metrics["variants"]["base"]  # the base is not retrained
    assert metrics["variants"]["specialist/codegen"]["seeds"]["0"] != metrics["variants"]["specialist/codegen"]["seeds"]["1"]
    replicated = json.loads((tmp_path / "rep" / "analysis" / "replicates.json").read_text())
    assert set(replicated["r_mean_per_seed"]) == {"0", "1"} and isinstance(replicated["stable"], bool)
    assert "Task-vector correlation over 2 seeds" in proc.stdout and " sd " in (tmp_path / "rep" / "metrics.md").read_text()


def test_second_run_reuses_every_artifact(first_run):
    tmp_path, _ = first_run
    _run(tmp_path, "run2")
    log = (tmp_path / "run2" / "run.log").read_text()
    assert "cache miss" not in log, log
    for label in ("specialist/codegen", "specialist/codesum", "mixture", "merged (ties)", "evaluation of merged"):
        assert f"cache hit: {label}" in log, label
    first = json.loads((tmp_path / "run1" / "metrics.json").read_text())["variants"]
    second = json.loads((tmp_path / "run2" / "metrics.json").read_text())["variants"]
    assert first == second


def test_changing_the_merge_reuses_the_specialists(first_run):
    tmp_path, _ = first_run
    _run(tmp_path, "run3", "merge=linear", "merge.weight=0.7")
    log = (tmp_path / "run3" / "run.log").read_text()
    assert "cache hit: specialist/codegen" in log and "cache hit: mixture" in log
    assert "cache miss: building merged (linear)" in log


def test_training_strategies_reuse_the_compare_runs_models(first_run):
    """`strategy=specialist task=codegen` and `strategy=mixture` train exactly what `compare` trained:
    same data and settings, so both are cache hits and write only the variants they produce."""
    tmp_path, _ = first_run
    _run(tmp_path, "spec", "strategy=specialist", "task=codegen")
    log = (tmp_path / "spec" / "run.log").read_text()
    assert "cache hit: specialist/codegen" in log and "cache miss: building specialist" not in log
    assert set(json.loads((tmp_path / "spec" / "metrics.json").read_text())["variants"]) == {"specialist/codegen"}
    _run(tmp_path, "mix", "strategy=mixture")
    log = (tmp_path / "mix" / "run.log").read_text()
    assert "cache hit: mixture" in log and "cache miss: building mixture" not in log


def test_debug_config_runs_the_whole_loop_on_the_tiny_model(tmp_path):
    """`debug=default` (conf/debug/default.yaml) overrides model, trainer, eval and logger by itself."""
    proc = subprocess.run([sys.executable, "run.py", "debug=default", f"cache.root={tmp_path / 'cache'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    config = metrics["config"]
    assert config["model"]["name"] == "tiny" and config["trainer"]["max_steps"] == 2
    assert config["logger"]["wandb"]["enabled"] is False and config["eval"]["humaneval"]["limit"] == 2
    assert set(metrics["variants"]) == {"base", "specialist/codegen", "specialist/codesum", "mixture", "merged"}
    for name, variant in metrics["variants"].items():
        m = variant["metrics"]
        assert sorted(m) == ["aggregate", "codegen/humaneval_pass@1", "codegen/loss", "codesum/bleu4", "codesum/loss",
                             "lm_eval/pydoc_next/acc", "lm_eval/pydoc_next/acc_norm", "lm_eval/pydoc_next/acc_norm_stderr",
                             "lm_eval/pydoc_next/acc_stderr"]
        assert m["aggregate"] == pytest.approx(-(m["codegen/loss"] + m["codesum/loss"]) / 2), name
    assert metrics["objective"] == metrics["variants"]["merged"]["metrics"]["aggregate"]
    assert "a seeded subset of 2 of the 164 HumanEval problems" in proc.stdout and "Recommendation:" in proc.stdout


def test_fisher_merge_computes_each_specialists_fisher_once_from_the_cache(first_run):
    """`merge=fisher` under strategy=compare: no fisher_paths given, so each specialist's diagonal Fisher on
    its own training data is computed once, cached, and reused by the next Fisher merge (issue 16's defect)."""
    tmp_path, _ = first_run
    _run(tmp_path, "fisher1", "merge=fisher", "merge.fisher_batches=2", "analysis.enabled=false")
    log = (tmp_path / "fisher1" / "run.log").read_text()
    assert "cache hit: specialist/codegen" in log
    for name in ("specialist/codegen", "specialist/codesum"):
        assert f"cache miss: building Fisher of {name}" in log, name
    metrics = json.loads((tmp_path / "fisher1" / "metrics.json").read_text())
    merged = metrics["variants"]["merged"]["metrics"]
    assert 5.0 < merged["codegen/loss"] < 12.0
    _run(tmp_path, "fisher2", "merge=fisher", "merge.fisher_batches=2", "merge.fisher_floor=1e-3",
         "analysis.enabled=false")
    log = (tmp_path / "fisher2" / "run.log").read_text()
    assert "cache hit: Fisher of specialist/codegen" in log and "cache miss: building merged (fisher)" in log


def _manifest(tmp_path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "cache" / kind).glob("*/manifest.json"))]


def test_regmean_merge_computes_each_specialists_grams_once_from_the_cache(first_run):
    """`merge=regmean` under strategy=compare: each specialist's Grams on its own training data are computed
    once (one file per block), cached, and reused by the next RegMean merge (another alpha)."""
    tmp_path, _ = first_run
    _run(tmp_path, "regmean1", "merge=regmean", "merge.gram_batches=2", "analysis.enabled=false")
    log = (tmp_path / "regmean1" / "run.log").read_text()
    for name in ("specialist/codegen", "specialist/codesum"):
        assert f"cache miss: building Grams of {name}" in log, name
    grams = _manifest(tmp_path, "gram")
    assert len(grams) == 2 and all(m["batches"] == 2 for m in grams)
    for m in grams:  # the tiny model's 2 blocks: one file each
        assert sorted(Path(f).name for f in m["files"] if f.endswith(".safetensors")) == [
            "layer_0000.safetensors", "layer_0001.safetensors"], m["files"]
    merged = json.loads((tmp_path / "regmean1" / "metrics.json").read_text())["variants"]["merged"]["metrics"]
    assert 5.0 < merged["codegen/loss"] < 12.0
    _run(tmp_path, "regmean2", "merge=regmean", "merge.gram_batches=2", "merge.alpha=0.5", "analysis.enabled=false",
         "eval=none")  # the merge alone
    log = (tmp_path / "regmean2" / "run.log").read_text()
    assert "cache hit: Grams of specialist/codegen" in log and "cache hit: Grams of specialist/codesum" in log
    assert "cache miss: building Grams" not in log and "cache miss: building merged (regmean)" in log
    assert len(_manifest(tmp_path, "gram")) == 2
    times = [m["merge_seconds"] for m in _manifest(tmp_path, "merged") if m["config"]["method"] == "regmean"]
    print(f"RegMean on model=tiny: Grams {[m['gram_seconds'] for m in grams]} s per specialist, merges {times} s")


def test_regmean_plus_merge_takes_its_grams_from_the_merged_layers_and_reuses_them(first_run):
    tmp_path, _ = first_run
    _run(tmp_path, "plus1", "merge=regmean_plus", "merge.gram_batches=2", "analysis.enabled=false")
    log = (tmp_path / "plus1" / "run.log").read_text()
    assert "cache miss: building RegMean++ Grams of specialist/codegen, specialist/codesum" in log
    merged = json.loads((tmp_path / "plus1" / "metrics.json").read_text())["variants"]["merged"]["metrics"]
    assert 5.0 < merged["codegen/loss"] < 12.0
    # another output dtype: a new merge from the same Grams
    _run(tmp_path, "plus2", "merge=regmean_plus", "merge.gram_batches=2", "merge.dtype=bfloat16",
         "analysis.enabled=false", "eval=none")
    log = (tmp_path / "plus2" / "run.log").read_text()
    assert "cache hit: RegMean++ Grams of" in log and "cache miss: building RegMean++" not in log
    assert "cache miss: building merged (regmean_plus)" in log
    plus = _manifest(tmp_path, "gram_plus")
    assert len(plus) == 1
    times = [m["merge_seconds"] for m in _manifest(tmp_path, "merged") if m["config"]["method"] == "regmean_plus"]
    print(f"RegMean++ on model=tiny: Grams {plus[0]['gram_seconds']} s, merges {times} s")
