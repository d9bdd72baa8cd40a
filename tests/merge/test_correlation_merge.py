"""merge=correlation: the rule's identities on small tensors (uncorrelated -> task arithmetic, identical ->
that vector, sign-conflicting -> TIES), norm-share weights, knob validation, and the method in both engines,
the standalone command and the compare strategy on the tiny model."""

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

from mixmerge.analysis import pearson, sign_conflict_rate
from mixmerge.merge import InMemoryMerger, merge_folders, resolve_params, validate_merge_config
from mixmerge.merge.combine import merge_tensor
from mixmerge.merge.correlation_merge import measure, merge_correlated
from mixmerge.merge.correlation_rule import CorrelationRule
from mixmerge.merge.io import SafetensorsFolder

ROOT = Path(__file__).resolve().parents[2]
NAME = "model.layers.0.mlp.up_proj.weight"


def _hadamard(n: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix: rows 1.. are +-1 vectors with zero mean, pairwise orthogonal."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _ref(method: str, base, models, **cfg):
    """The registry's own method on one tensor (the reference the rule must reduce to)."""
    return merge_tensor(NAME, base, models, resolve_params({"method": method, **cfg}, len(models)))[0]


@pytest.fixture
def base():
    return torch.randn(8, 8, generator=torch.Generator().manual_seed(0))


def test_uncorrelated_task_vectors_are_task_arithmetic_with_the_rules_weights(base):
    h = _hadamard(64)
    a, b = 0.02 * h[1].reshape(8, 8), 0.005 * h[2].reshape(8, 8)  # r = 0 exactly, half the signs conflict
    m = measure([a, b])
    assert m.pearson == pytest.approx(0.0, abs=1e-12) and m.sign_conflict_rate == 0.5
    rule = CorrelationRule(norm_share_power=0.5, conflict_threshold=0.6)
    merged, stats = merge_correlated(base, [a, b], rule, [1.0, 1.0], lam=1.3)
    # no correlation discount; b moved the tensor a quarter as much as a: weight (1/4)^0.5
    assert stats.mode == "sum" and stats.weights == pytest.approx((1.0, 0.5))
    want = _ref("task_arithmetic", base, [base + a, base + b], weights=[1.0, 0.5], **{"lambda": 1.3})
    torch.testing.assert_close(merged, want, rtol=0, atol=1e-6)  # (base + tau) - base rounds
    torch.testing.assert_close(merged, base + 1.3 * (a + 0.5 * b), rtol=0, atol=1e-6)
    # equal norms: plain task arithmetic, weight 1 each, whatever the norm power
    merged, stats = merge_correlated(base, [a, 0.02 * h[2].reshape(8, 8)], CorrelationRule(norm_share_power=2.0),
                                     [1.0, 1.0])
    assert stats.weights == pytest.approx((1.0, 1.0))
    torch.testing.assert_close(merged, base + a + 0.02 * h[2].reshape(8, 8), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_models", [2, 3])
def test_identical_task_vectors_give_that_vector_not_n_times_it(base, n_models):
    tau = 0.01 * torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    merged, stats = merge_correlated(base, [tau] * n_models, CorrelationRule(), [1.0] * n_models)
    assert stats.mode == "sum" and stats.pearson == pytest.approx(1.0)
    assert stats.weights == pytest.approx((1 / n_models,) * n_models)
    torch.testing.assert_close(merged, base + tau, rtol=0, atol=1e-7)
    # corr_strength 0 ignores the correlation: the shared movement is counted n times (task arithmetic)
    merged, _ = merge_correlated(base, [tau] * n_models, CorrelationRule(corr_strength=0.0), [1.0] * n_models)
    torch.testing.assert_close(merged, base + n_models * tau, rtol=0, atol=1e-6)


def test_correlated_task_vectors_keep_each_tasks_own_movement(base):
    """Equal norms, Pearson r: the merge's projection on each task vector is that task vector's own norm^2."""
    h = _hadamard(64)
    u, v = h[1].reshape(8, 8), h[2].reshape(8, 8)
    a, b = u, 0.6 * u + 0.8 * v  # |a| = |b|, r = 0.6
    merged, stats = merge_correlated(torch.zeros(8, 8), [a, b], CorrelationRule(), [1.0, 1.0])
    assert stats.pearson == pytest.approx(0.6) and stats.weights == pytest.approx((1 / 1.6, 1 / 1.6))
    for t in (a, b):
        assert float((merged * t).sum()) == pytest.approx(float((t * t).sum()), rel=1e-6)


def test_sign_conflicting_task_vectors_are_ties_at_the_rules_density(base):
    gen = torch.Generator().manual_seed(2)
    a = 0.01 * torch.randn(8, 8, generator=gen)
    b = -0.5 * a + 0.001 * torch.randn(8, 8, generator=gen)  # opposite signs almost everywhere
    rule = CorrelationRule(conflict_threshold=0.6, density_max=0.8, density_min=0.3, norm_share_power=1.0)
    m = measure([a, b])
    assert m.sign_conflict_rate > 0.9
    merged, stats = merge_correlated(base, [a, b], rule, [1.0, 1.0], lam=0.9)
    assert stats.mode == "ties"
    want_density = 0.8 - 0.5 * (m.sign_conflict_rate - 0.6) / 0.4
    assert stats.density == pytest.approx(want_density) and 0.3 <= stats.density < 0.8
    assert stats.weights == pytest.approx((1.0, m.norms[1] / m.norms[0]))
    want = _ref("ties", base, [base + a, base + b], density=stats.density, weights=list(stats.weights),
                **{"lambda": 0.9})
    torch.testing.assert_close(merged, want, rtol=0, atol=1e-6)  # (base + tau) - base rounds
    assert stats.kept_fraction == pytest.approx(int(stats.density * 64) / 64)


def test_density_falls_linearly_with_conflict_above_the_threshold():
    rule = CorrelationRule(conflict_threshold=0.5, density_max=0.9, density_min=0.1)
    assert [rule.density_at(c) for c in (0.5, 0.75, 1.0)] == pytest.approx([0.9, 0.5, 0.1])
    assert CorrelationRule(conflict_threshold=1.0).decide([1.0, 1.0], -1.0, 1.0, [1, 1]).mode == "sum"


def test_norm_share_weights_damp_the_task_that_moved_the_tensor_less():
    norms = [4.0, 1.0, 0.0]
    assert CorrelationRule(norm_share_power=0.0).norm_factors(norms) == [1.0, 1.0, 0.0]
    assert CorrelationRule(norm_share_power=1.0).norm_factors(norms) == [1.0, 0.25, 0.0]
    assert CorrelationRule(norm_share_power=2.0).norm_factors(norms) == [1.0, 0.0625, 0.0]
    # no task is scaled up; the priors (merge.weights, rescaled to mean 1) multiply in
    d = CorrelationRule(norm_share_power=1.0).decide([4.0, 1.0], 0.0, 0.5, priors=[0.75, 0.25])
    assert d.mode == "sum" and d.weights == pytest.approx((1.5, 0.125))
    d = CorrelationRule(norm_share_power=1.0).decide([4.0, 1.0], 0.0, 0.5, priors=[3.0, 1.0])
    assert d.weights == pytest.approx((1.5, 0.125))


def test_untouched_tensor_is_the_base_and_one_task_is_added(base):
    zero = torch.zeros(8, 8)
    merged, stats = merge_correlated(base, [zero, zero], CorrelationRule(), [1.0, 1.0])
    assert stats.mode == "copy" and torch.equal(merged, base)
    tau = 0.01 * torch.ones(8, 8)
    merged, stats = merge_correlated(base, [tau], CorrelationRule(), [1.0], lam=2.0)
    assert stats.mode == "sum" and stats.pearson is None and stats.input_sign_conflict_rate is None
    torch.testing.assert_close(merged, base + 2 * tau, rtol=0, atol=1e-7)


def test_measure_is_the_analysis_statistics():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(100, generator=gen), torch.randn(100, generator=gen)
    m = measure([a, b])
    assert m.pearson == pearson(a, b) and m.sign_conflict_rate == sign_conflict_rate(a, b)
    assert m.norms == pytest.approx((float(a.norm()), float(b.norm())))
    assert sum(m.norm_shares) == pytest.approx(1.0)


@pytest.mark.parametrize(("cfg", "message"), [
    ({"corr_strength": 1.5}, "merge.corr_strength=1.5 is outside [0, 1]"),
    ({"norm_share_power": -1}, "merge.norm_share_power=-1.0 is negative"),
    ({"conflict_threshold": 2}, "merge.conflict_threshold=2.0 is outside [0, 1]"),
    ({"density_max": 0}, "merge.density_max=0.0 is outside (0, 1]"),
    ({"density_max": 0.4, "density_min": 0.5}, "merge.density_min=0.5 must be in (0, merge.density_max=0.4]"),
    ({"density_min": "low"}, "merge.density_min='low' must be a finite number"),
    ({"density": 0.5}, "merge.density is chosen per tensor by merge=correlation; set merge.density_max"),
    ({"weights": [1.0, -0.5]}, "merge=correlation reads the weights as task priors"),
    ({"conflict_treshold": 0.5}, "did you mean 'conflict_threshold'"),
])
def test_knobs_are_validated_naming_the_key(cfg, message):
    with pytest.raises(ValueError, match=None) as err:
        validate_merge_config({"method": "correlation", **cfg}, 2)
    assert message in str(err.value)


def test_knobs_belong_to_merge_correlation_only():
    with pytest.raises(ValueError, match="merge.conflict_threshold is a knob of merge=correlation only"):
        validate_merge_config({"method": "ties", "density": 0.5, "conflict_threshold": 0.5}, 2)
    params = resolve_params({"method": "correlation", "weight": 0.5, "density_min": 0.1}, 2)
    assert params.correlation == CorrelationRule(density_min=0.1)
    assert params.as_report()["correlation"]["density_min"] == 0.1


def test_every_trial_of_the_search_space_is_a_valid_config():
    """conf/hparams_search/space/correlation.yaml passes the sweeper's checks, and every point Optuna may
    sample from it is a merge config the rule accepts (density_min's range lies below density_max's)."""
    import optuna

    from mixmerge.sweep import space as sp
    from tests.sweep.test_sweep_space import _load_space

    specs, constraints, domains = _load_space("correlation")
    sp.validate_space(specs, constraints, domains, "tpe")
    assert {s.name for s in specs} >= {f"merge.{k}" for k in CorrelationRule().as_report()}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(50):
        point = sp.suggest_params(study.ask(), specs, constraints)
        validate_merge_config({"method": "correlation", **{k.removeprefix("merge."): v for k, v in point.items()}}, 2)


def _conflicting_specialist(base: Path, spec: Path, out: Path) -> Path:
    """``base - 0.5 (spec - base)`` plus a little noise: a task vector opposing ``spec``'s."""
    shutil.copytree(spec, out)
    b, s = load_file(str(base / "model.safetensors")), load_file(str(spec / "model.safetensors"))
    gen = torch.Generator().manual_seed(5)
    state = {n: b[n] - 0.5 * (s[n] - b[n]) + 0.02 * (s[n] - b[n]).std() * torch.randn(b[n].shape, generator=gen)
             if b[n].is_floating_point() else b[n] for n in b}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_both_engines_agree_and_report_each_tensors_decision(tiny_base, specialists, tmp_path):
    opposed = _conflicting_specialist(tiny_base, specialists[0], tmp_path / "opposed")
    cfg = {"method": "correlation", "weight": 0.5, "lambda": 1.0}
    for name, models in (("independent", specialists), ("opposed", [specialists[0], opposed])):
        out = tmp_path / f"merged_{name}"
        report = merge_folders(cfg, tiny_base, models, out)
        on_disk = json.loads((out / "merge_report.json").read_text())
        assert on_disk["parameters"]["correlation"] == CorrelationRule().as_report()
        modes = {t["mode"] for t in report["per_tensor"].values()}
        # independent seeded deltas: r ~ 0, conflicts ~ 0.5 -> summed; an opposed task vector -> TIES
        assert modes == ({"sum"} if name == "independent" else {"ties"}), (name, modes)
        row = report["per_tensor"][NAME]
        assert set(row) >= {"mode", "weights", "density", "pearson", "input_sign_conflict_rate", "norm_shares"}
        merged = SafetensorsFolder(out)
        srcs = [SafetensorsFolder(p) for p in (tiny_base, *models)]
        b, *xs = (s.get(NAME).float() for s in srcs)
        want, stats = merge_correlated(b, [x - b for x in xs], CorrelationRule(), [0.5, 0.5])
        torch.testing.assert_close(merged.get(NAME), want, rtol=0, atol=0)
        assert row["weights"] == [round(w, 6) for w in stats.weights]
        merger = InMemoryMerger(tiny_base, models)
        in_memory = {n: t for n, t, _ in merger.merged_tensors(resolve_params(cfg, 2))}
        for n, t in in_memory.items():
            torch.testing.assert_close(t, merged.get(n).float(), rtol=0, atol=1e-6)
        for s in [merged, *srcs]:
            s.close()


def test_in_memory_merge_reports_decisions_and_measures_once(tiny_base, specialists):
    from mixmerge.models import load_model

    merger = InMemoryMerger(tiny_base, specialists)
    model = load_model(tiny_base)
    report = merger.merge_into(model, {"method": "correlation", "report_stats": True})
    assert report["per_tensor"][NAME]["mode"] == "sum" and len(merger._measured) == report["n_tensors"]
    first = dict(merger._measured)
    report = merger.merge_into(model, {"method": "correlation", "report_stats": True, "corr_strength": 0.0,
                                       "conflict_threshold": 0.0})
    assert all(merger._measured[n] is m for n, m in first.items())  # reused, not recomputed
    assert {t["mode"] for t in report["per_tensor"].values()} <= {"ties", "copy"}


def test_standalone_command_merges_with_correlation(tiny_base, specialists, tmp_path):
    out = tmp_path / "merged"
    cmd = [sys.executable, "run.py", "strategy=merge", "merge=correlation", f"merge.base={tiny_base}",
           f"merge.models=[{specialists[0]},{specialists[1]}]", "merge.conflict_threshold=0.45",
           f"merge.output={out}", "eval=none", "logger=none", "analysis.enabled=false",
           f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "merge_report.json").read_text())
    assert report["method"] == "correlation" and report["parameters"]["correlation"]["conflict_threshold"] == 0.45
    ref = merge_folders({"method": "correlation", "conflict_threshold": 0.45}, tiny_base, specialists,
                        tmp_path / "ref")
    assert [t["mode"] for t in report["per_tensor"].values()] == [t["mode"] for t in ref["per_tensor"].values()]
    got, want = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "ref" / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)


@pytest.mark.slow
def test_compare_strategy_runs_merge_correlation_on_the_tiny_model(tmp_path):
    fast = ["model=tiny", "logger=none", "trainer.max_steps=2", "task.max_train_examples=16",
            "task.max_eval_examples=8", "eval=quick", "eval.loss.limit=8", "analysis.enabled=false",
            "strategy.variants=[merged]", "merge=correlation"]
    proc = subprocess.run([sys.executable, "run.py", *fast, f"cache.root={tmp_path / 'cache'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = json.loads((tmp_path / "run" / "metrics.json").read_text())["variants"]["merged"]
    assert 5.0 < merged["metrics"]["codegen/loss"] < 12.0
    report = json.loads((Path(merged["artifact"]) / "merge_report.json").read_text())
    assert report["method"] == "correlation" and report["per_tensor"]
    assert {t["mode"] for t in report["per_tensor"].values()} <= {"sum", "ties", "copy"}
