"""lm-eval tasks on a live model: config parsing, result naming, and the numbers of the local task on the
tiny model, in memory (a live merge) and on disk, equal to lm-eval's own loading and its CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mixmerge.eval import lm_eval_tasks
from mixmerge.eval.lm_eval_tasks import (
    LOCAL_TASK_DIR,
    LmEvalTask,
    evaluate_lm_eval,
    include_paths,
    lm_eval_cache_key,
    parse_tasks,
    split_metrics,
    task_manager,
)

LIMIT = 12  # items of pydoc_next per evaluation: 48 loglikelihood requests, seconds on the tiny model
CFG = {"tasks": [{"name": "pydoc_next", "limit": LIMIT}], "batch_size": 8}


def test_tasks_parse_with_defaults_and_per_task_settings():
    tasks = parse_tasks({"tasks": ["pydoc_next", {"name": "arc_easy", "num_fewshot": 5, "limit": 0.5,
                                                  "batch_size": 2}],
                         "num_fewshot": 0, "limit": 100, "batch_size": 16})
    assert tasks == [LmEvalTask("pydoc_next", 0, 100, 16), LmEvalTask("arc_easy", 5, 0.5, 2)]
    assert parse_tasks(None) == [] and parse_tasks({"tasks": []}) == []


@pytest.mark.parametrize(("cfg", "message"), [
    ({"tasks": "pydoc_next"}, r"eval.lm_eval.tasks must be a list .*tasks=\[pydoc_next\]"),
    ({"tasks": [{"num_fewshot": 1}]}, r"eval.lm_eval.tasks\[0\].*give a task name"),
    ({"tasks": [{"name": "a", "shots": 1}]}, r"eval.lm_eval.tasks\[0\] \(a\) has unknown keys \['shots'\]"),
    ({"tasks": [{"name": "a", "num_fewshot": -1}]}, r"\(a\).num_fewshot=-1"),
    ({"tasks": [{"name": "a", "limit": 0}]}, r"\(a\).limit=0"),
    ({"tasks": ["a"], "batch_size": 0}, r"\(a\).batch_size=0"),
    ({"tasks": ["a", "a"]}, r"lists a task twice"),
    ({"task": ["a"]}, r"eval.lm_eval has unknown keys \['task'\]"),
])
def test_bad_task_config_names_the_field(cfg, message):
    with pytest.raises(ValueError, match=message):
        parse_tasks(cfg)


def test_include_path_must_be_a_folder(tmp_path):
    assert include_paths({"include_path": str(tmp_path)}) == [str(LOCAL_TASK_DIR), str(tmp_path.resolve())]
    with pytest.raises(FileNotFoundError, match=r"eval.lm_eval.include_path='/no/such'"):
        include_paths({"include_path": "/no/such"})


def test_unknown_task_is_refused_naming_the_field(monkeypatch):
    """Without indexing lm-eval's 15k bundled YAMLs: the bundled manager is the local one here."""
    local = task_manager({}, [LmEvalTask("pydoc_next", None, None, 8)])
    monkeypatch.setitem(lm_eval_tasks._MANAGERS, ((str(LOCAL_TASK_DIR),), True), local)
    with pytest.raises(ValueError, match=r"eval.lm_eval.tasks: lm-eval knows no task or group \['pydoc_nxt'\]"):
        task_manager({}, [LmEvalTask("pydoc_nxt", None, None, 8)])


def test_result_rows_become_named_metrics_with_stderr():
    row = {"alias": "gsm8k", "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict-match": 0.25,
           "exact_match_stderr,strict-match": 0.05, "bleu,none": 12.0, "bleu_stderr,none": "N/A", "samples": 8}
    values, errors = split_metrics("gsm8k", row)
    assert values == {"lm_eval/gsm8k/acc": 0.5, "lm_eval/gsm8k/exact_match,strict-match": 0.25,
                      "lm_eval/gsm8k/bleu": 12.0}
    assert errors == {"lm_eval/gsm8k/acc": 0.1, "lm_eval/gsm8k/exact_match,strict-match": 0.05}


def test_cache_key_follows_the_task_files(tmp_path):
    (tmp_path / "t.yaml").write_text("task: t\n")
    first = lm_eval_cache_key({"include_path": str(tmp_path)})
    assert first == lm_eval_cache_key({"include_path": str(tmp_path)})
    (tmp_path / "t.yaml").write_text("task: t2\n")
    assert lm_eval_cache_key({"include_path": str(tmp_path)})["task_files"] != first["task_files"]


def test_no_tasks_costs_nothing(tiny_model, tmp_path):
    model, tokenizer = tiny_model
    assert evaluate_lm_eval(model, tokenizer, {"tasks": []}, out_dir=tmp_path) == ({}, {}, {})
    assert not (tmp_path / "lm_eval").exists()


def _specialist(base: Path, out: Path, seed: int) -> Path:
    shutil.copytree(base, out)
    state = load_file(str(out / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    for name, t in state.items():
        if t.is_floating_point():
            state[name] = t + 0.05 * t.float().std().clamp(min=1e-3) * torch.randn(t.shape, generator=gen)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def merged(tiny_base, tmp_path_factory):
    """A TIES merge of two perturbed copies of the tiny model: live (in memory) and saved (on disk)."""
    from mixmerge.merge import InMemoryMerger, merge_folders
    from mixmerge.models import load_model

    root = tmp_path_factory.mktemp("lm_eval_merge")
    specs = [_specialist(tiny_base.path, root / f"spec{i}", seed=7 + i) for i in range(2)]
    cfg = {"method": "ties", "density": 0.6, "weight": 0.3}
    merge_folders(cfg, tiny_base.path, specs, root / "merged")
    live = load_model(tiny_base.path)
    InMemoryMerger(tiny_base.path, specs).merge_into(live, cfg)
    return live, root / "merged"


@pytest.fixture(scope="module")
def live_result(merged, tiny_model, tmp_path_factory):
    live, _ = merged
    out = tmp_path_factory.mktemp("lm_eval_live")
    return evaluate_lm_eval(live, tiny_model[1], CFG, out_dir=out), out


def test_live_merge_equals_the_saved_merge_and_lm_evals_own_loading(merged, live_result, tiny_model):
    from lm_eval import simple_evaluate

    from mixmerge.models import load_model, load_tokenizer

    (metrics, stderr, samples), out = live_result
    assert set(metrics) == {"lm_eval/pydoc_next/acc", "lm_eval/pydoc_next/acc_norm"} == set(stderr)
    for name, value in metrics.items():  # LIMIT items, four choices: a multiple of 1/12 with the binomial stderr
        assert round(value * LIMIT) == pytest.approx(value * LIMIT, abs=1e-9)
        assert stderr[name] == pytest.approx((value * (1 - value) / (LIMIT - 1)) ** 0.5)
    saved = json.loads((out / "lm_eval" / "pydoc_next.json").read_text())
    assert saved["settings"]["limit"] == LIMIT and saved["results"]["pydoc_next"]["acc,none"] == metrics[
        "lm_eval/pydoc_next/acc"]
    examples = saved["examples"]  # one record per item; its accuracies average to the reported metric
    assert [e["doc_id"] for e in examples] == list(range(LIMIT))
    assert sum(e["acc"] for e in examples) / LIMIT == pytest.approx(metrics["lm_eval/pydoc_next/acc"])
    for name, value in metrics.items():  # the per-document observations intervals resample: lm-eval's own
        assert samples[name].n == LIMIT and samples[name].value == pytest.approx(value, abs=1e-12)
        assert list(samples[name].numerators) == [float(e[name.rsplit("/", 1)[1]]) for e in examples]
    for e in examples:  # acc = the target's loglikelihood is the highest of the four
        lls = [float(r[0]) for r in e["filtered_resps"]]
        assert e["acc"] == float(lls.index(max(lls)) == int(e["target"]))

    _, folder = merged
    on_disk = evaluate_lm_eval(load_model(folder), load_tokenizer(folder), CFG, out_dir=None)
    assert on_disk[:2] == (metrics, stderr)

    # lm-eval loading the saved folder itself (what its CLI does), in this process
    own = simple_evaluate(model="hf", model_args=f"pretrained={folder},device=cpu,batch_size=8",
                          tasks=["pydoc_next"], limit=LIMIT,
                          task_manager=task_manager(CFG, parse_tasks(CFG)))["results"]["pydoc_next"]
    assert own["acc,none"] == metrics["lm_eval/pydoc_next/acc"]
    assert own["acc_norm,none"] == metrics["lm_eval/pydoc_next/acc_norm"]
    assert own["acc_stderr,none"] == stderr["lm_eval/pydoc_next/acc"]

    # the merge really changed the live model (so the equalities above compare a merge, not the base)
    base_model, _ = tiny_model
    assert any(not torch.equal(a, b) for a, b in zip(merged[0].parameters(), base_model.parameters(), strict=True))


def test_evaluation_stage_reports_lm_eval_metrics_with_stderr(tiny_model, tmp_path):
    from mixmerge.eval.suite import eval_cache_config, evaluate_model

    model, tokenizer = tiny_model
    eval_cfg = {"loss": {"enabled": False}, "lm_eval": {"tasks": [{"name": "pydoc_next", "limit": 4}]}}
    metrics = evaluate_model(model, tokenizer, eval_cfg=eval_cfg, heldout={}, prompt_style="completion",
                             out_dir=tmp_path)
    assert set(metrics) == {"lm_eval/pydoc_next/acc", "lm_eval/pydoc_next/acc_norm",
                            "lm_eval/pydoc_next/acc_stderr", "lm_eval/pydoc_next/acc_norm_stderr"}
    summary = json.loads((tmp_path / "eval_summary.json").read_text())
    assert summary["metrics"] == metrics and summary["seconds"]["lm_eval"] > 0
    key = eval_cache_config(eval_cfg)["lm_eval"]["_versions"]
    assert key == lm_eval_cache_key(eval_cfg["lm_eval"]) and len(key["task_files"]) == 16


@pytest.mark.slow  # lm-eval's CLI indexes its ~15k bundled task YAMLs first: about a minute on 2 cores
def test_numbers_equal_the_lm_eval_cli_on_the_saved_model(merged, live_result, tmp_path):
    (metrics, stderr, _), _ = live_result
    _, folder = merged
    cli = Path(sys.executable).with_name("lm_eval")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([str(cli), "--model", "hf", "--model_args", f"pretrained={folder}", "--tasks",
                           "pydoc_next", "--include_path", str(LOCAL_TASK_DIR), "--device", "cpu", "--limit",
                           str(LIMIT), "--batch_size", "8", "--output_path", str(tmp_path / "cli")],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result_file = next((tmp_path / "cli").rglob("results_*.json"))
    row = json.loads(result_file.read_text())["results"]["pydoc_next"]
    assert row["acc,none"] == metrics["lm_eval/pydoc_next/acc"]
    assert row["acc_norm,none"] == metrics["lm_eval/pydoc_next/acc_norm"]
    assert row["acc_stderr,none"] == stderr["lm_eval/pydoc_next/acc"]
    assert row["acc_norm_stderr,none"] == stderr["lm_eval/pydoc_next/acc_norm"]


def test_a_bad_lm_eval_config_fails_at_validation_before_any_work(tmp_path):
    from mixmerge.config import ConfigError, validate_config
    from tests.test_config import _compose

    cfg = _compose(["model=tiny", "logger=none", "eval.lm_eval.tasks=[{name: pydoc_next, shots: 1}]"])
    with pytest.raises(ConfigError, match=r"eval.lm_eval.tasks\[0\] \(pydoc_next\) has unknown keys \['shots'\]"):
        validate_config(cfg)
    cfg = _compose(["model=tiny", "logger=none", f"eval.lm_eval.include_path={tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match=r"eval.lm_eval.include_path="):
        validate_config(cfg)
    validate_config(_compose(["model=tiny", "logger=none"]))  # the default (pydoc_next) is valid


def test_global_random_state_is_left_as_it_was():
    import random

    import numpy as np

    from mixmerge.eval.lm_eval_tasks import _global_rng_kept

    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    with _global_rng_kept():
        random.seed(0), np.random.seed(1234), torch.manual_seed(1234)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
