"""The Optuna sweeper plugin end to end on the toy app: persistence and resume, multi-objective, failures,
invalid spaces, grid, two stages, the joblib launcher, two processes sharing one study."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.mixmerge_optuna_sweeper._impl import launcher_parallelism
from mixmerge.sweep import study as st

TOY_APP = Path(__file__).parent / "toy_app" / "app.py"
REPO = Path(__file__).resolve().parents[2]

DELLA = "model-merge-della"


def _states(study):
    return [t.state for t in study.trials]


def test_plugin_is_discovered():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    assert "MixmergeOptunaSweeper" in [p.__name__ for p in Plugins.instance().discover(Sweeper)]


def test_killed_sweep_resumes_only_the_missing_trials(toy):
    common = ("hparams_search=merge_optuna", "merge=della", "hydra.sweeper.n_trials=4")
    killed = toy.run(*common, "toy.exit_at_job=3", check=False)
    assert killed.returncode == 137
    study = toy.study(DELLA)
    assert _states(study) == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    assert len(toy.jobs()) == 2

    toy.run(*common, sweep="sweep_resumed")  # a new sweep directory, same study
    study = toy.study(DELLA)
    states = _states(study)
    assert states.count(TrialState.COMPLETE) == 4 and states[2] == TrialState.FAIL  # the killed trial
    assert "orphaned" in study.trials[2].user_attrs[st.SKIPPED_ATTR]
    jobs = toy.jobs()
    assert len(jobs) == 4  # 2 before the kill + exactly the 2 missing ones
    assert sorted(p.name for p in (toy.tmp / "sweep_resumed").iterdir() if p.name.isdigit()) == ["3", "4"]
    # Seeded with seed + trials so far: the resumed sampler does not replay the first proposals.
    assert {j["weight"] for j in jobs[2:]}.isdisjoint({j["weight"] for j in jobs[:2]})
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.params["merge.density"] + t.params["merge.epsilon"] < 1

    toy.run(*common, sweep="sweep_again")  # finished: nothing runs
    assert len(toy.jobs()) == 4 and len(toy.study(DELLA).trials) == 5
    res = yaml.safe_load((toy.tmp / "sweep_again" / "optimization_results.yaml").read_text())
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert res["best_value"] == pytest.approx(best.value) and res["n_complete"] == 4


def test_multi_objective_study_writes_the_pareto_front(toy):
    toy.run("hparams_search=merge_optuna_pareto", "merge=linear", "hydra.sweeper.n_trials=6",
            "hydra/sweeper/sampler=random", report=True)
    sweep = toy.tmp / "sweep"
    res = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert res["directions"] == ["maximize", "maximize"] and res["n_complete"] == 6
    jobs = toy.jobs()
    # Toy: codegen peaks at weight 0.8, codesum at 0.2, so the front is every weight in [0.2, 0.8].
    front_weights = sorted(s["params"]["merge.weight"] for s in res["solutions"])
    expected = sorted(j["weight"] for j in jobs if 0.2 <= j["weight"] <= 0.8)
    assert front_weights == pytest.approx(expected) and expected
    for s in res["solutions"]:
        w = s["params"]["merge.weight"]
        assert s["values"] == pytest.approx([1 - (w - 0.8) ** 2, 1 - (w - 0.2) ** 2])
    rows = list(csv.DictReader((sweep / "pareto_front.csv").open()))
    assert len(rows) == len(res["solutions"])
    assert (sweep / "pareto_front.png").stat().st_size > 1000
    assert (sweep / "report" / "pareto_front.png").exists()


def test_failed_and_nan_trials_do_not_abort_the_study(toy):
    toy.run("hparams_search=merge_optuna", "merge=linear", "hydra.sweeper.n_trials=5", "hydra.sweeper.seed=3",
            "toy.fail_if_weight_above=0.75", "toy.nan_if_weight_above=0.6", "hydra/sweeper/sampler=random",
            "hydra.sweeper.max_failures=30")
    study = toy.study("model-merge-linear")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(done) == 5 and all(t.params["merge.weight"] <= 0.6 for t in done)
    assert failed, "seed 3 draws weights above 0.6; they must become FAIL trials"
    reasons = {t.user_attrs[st.FAILURE_ATTR].split(":")[0] for t in failed}
    assert reasons <= {"RuntimeError", "objective is nan"} and all(
        ("RuntimeError" in t.user_attrs[st.FAILURE_ATTR]) == (t.params["merge.weight"] > 0.75) for t in failed)


@pytest.mark.parametrize(("overrides", "message"), [
    (("merge=model_stock",), "hydra.sweeper.params is empty: nothing to search"),
    (("merge=della", "merge.density=interval(0.5, 1.0)"), "cannot always hold"),
    (("merge=ties", "merge.density=interval(0.1, 1.2)"), "leaves the valid domain \\[0.0, 1.0\\]"),
    (("merge=linear", "hydra/sweeper/sampler=cmaes"), "CMA-ES needs at least 2 continuous parameters"),
])
def test_invalid_search_spaces_are_rejected(toy, overrides, message):
    out = toy.run("hparams_search=merge_optuna", *overrides, check=False)
    assert out.returncode != 0
    assert pytest.importorskip("re").search(message, out.stdout), out.stdout[-2000:]
    assert toy.jobs() == []


def test_grid_runs_each_feasible_point_once(toy):
    grid = ("hparams_search=merge_optuna", "merge=della", "hydra/sweeper/sampler=grid",
            "merge.weight=choice(0.3, 0.7)", "merge.density=choice(0.8, 0.9)", "merge.epsilon=choice(0.1, 0.15)",
            "merge.lambda=1.0")
    toy.run(*grid, "toy.fail_if_weight_above=0.5")
    points = sorted((j["weight"], j["density"], j["epsilon"]) for j in toy.jobs())
    # density 0.9 leaves no room for epsilon >= 0.1, so only density 0.8 remains.
    assert points == [(0.3, 0.8, 0.1), (0.3, 0.8, 0.15), (0.7, 0.8, 0.1), (0.7, 0.8, 0.15)]
    study = toy.study(DELLA)
    assert [t.state for t in study.trials].count(TrialState.FAIL) == 2
    toy.run(*grid, sweep="again")  # only the two failed points run again
    assert sorted((j["weight"], j["epsilon"]) for j in toy.jobs()[4:]) == [(0.7, 0.1), (0.7, 0.15)]
    assert [t.state for t in toy.study(DELLA).trials].count(TrialState.COMPLETE) == 4


def test_two_stage_promotes_the_best_cheap_trials(toy):
    # the toy app has no eval group: its cheap stage is a seeded subset (eval.limit) instead of eval=quick
    args = ("hparams_search=merge_optuna_two_stage", "merge=linear", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.promotion.fraction=0.5", "hydra/sweeper/sampler=random",
            "hydra.sweeper.promotion.cheap_overrides=['eval.limit=16']",
            "hydra.sweeper.promotion.full_overrides=['eval.limit=null']")
    toy.run(*args)
    jobs = toy.jobs()
    cheap = [j for j in jobs if j["limit"] == 16]
    full = [j for j in jobs if j["limit"] is None]
    assert len(cheap) == 4 and len(full) == 2
    cheap_study = toy.study("model-merge-linear-two-stage")
    top2 = sorted(cheap_study.trials, key=lambda t: -t.value)[:2]
    assert sorted(j["weight"] for j in full) == pytest.approx(sorted(t.params["merge.weight"] for t in top2))
    full_study = toy.study("model-merge-linear-two-stage.full")
    assert sorted(t.user_attrs[st.CHEAP_TRIAL_ATTR] for t in full_study.trials) == sorted(t.number for t in top2)
    for t in full_study.trials:  # the full run is the exact toy objective, without the subset error
        w = t.params["merge.weight"]
        assert t.value == pytest.approx(1 - ((w - 0.8) ** 2 + (w - 0.2) ** 2) / 2 - 0.0)
    assert {p.name for p in (toy.tmp / "sweep").iterdir() if p.name.startswith("100")} == {
        str(10000 + t.number) for t in top2}
    res = yaml.safe_load((toy.tmp / "sweep" / "optimization_results.yaml").read_text())
    assert res["name"].endswith(".full")
    toy.run(*args, sweep="again")
    assert len(toy.jobs()) == 6


def test_joblib_launcher_runs_two_workers(toy):
    toy.run("hparams_search=merge_optuna", "merge=linear", "hydra/launcher=parallel", "hydra.sweeper.n_trials=4",
            "toy.sleep_s=0.5")
    jobs = toy.jobs()
    assert len(jobs) == 4 and len({j["pid"] for j in jobs}) == 2
    assert sorted(j["job_num"] for j in jobs) == [0, 1, 2, 3]
    assert len([t for t in toy.study("model-merge-linear").trials if t.state == TrialState.COMPLETE]) == 4


def test_two_processes_share_one_study(toy):
    args = ("hparams_search=merge_optuna", "merge=linear", "hydra.sweeper.n_trials=6", "toy.sleep_s=0.6")
    a = toy.start(*args, sweep="a")
    b = toy.start(*args, sweep="b")
    for p in (a, b):
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out[-3000:]
    jobs = toy.jobs()
    assert len(jobs) == 6  # one study: no trial twice, no overshoot
    assert len({j["pid"] for j in jobs}) == 2
    assert len([t for t in toy.study("model-merge-linear").trials if t.state == TrialState.COMPLETE]) == 6
    assert not math.isnan(sum(j["weight"] for j in jobs))


def test_default_storage_is_one_file_under_outputs(toy):
    args = ("hparams_search=merge_optuna", "merge=linear", "hydra.sweeper.n_trials=2")
    toy.run(*args, storage=False, sweep="multirun/first")
    toy.run(*args, "hydra.sweeper.n_trials=3", storage=False, sweep="multirun/second")
    db = toy.tmp / "outputs" / "optuna" / "studies.db"
    study = optuna.load_study(study_name="model-merge-linear", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert len(toy.jobs()) == 3


def test_launcher_configs_compose():
    """hydra/launcher=parallel (joblib) and =slurm (submitit) compose, and the sweeper batches to match."""
    launchers = [("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", 2),
                 ("slurm", "hydra_plugins.mixmerge_slurm_launcher.launcher.StagedSlurmLauncher", 4)]
    for launcher, target, batch in launchers:
        out = subprocess.run([sys.executable, str(TOY_APP), "--cfg", "hydra", "hparams_search=merge_optuna",
                              f"hydra/launcher={launcher}", f"hydra.searchpath=[file://{REPO / 'conf'}]"],
                             capture_output=True, text=True, timeout=60, check=True)
        cfg = OmegaConf.create({"hydra": OmegaConf.create(out.stdout).hydra})
        assert cfg.hydra.launcher._target_ == target
        assert cfg.hydra.sweeper.n_jobs == 0 and launcher_parallelism(cfg) == batch
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1


def test_plugin_is_discovered_from_the_installed_package(tmp_path):
    """With `pip install -e .` the plugin is found from any directory, without PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import mixmerge"], cwd=tmp_path, env=env, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("mixmerge is not installed in this environment (pip install -e .)")
    code = ("from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
            "print(sorted(p.__name__ for p in Plugins.instance().discover(Sweeper)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True)
    assert "MixmergeOptunaSweeper" in out.stdout


def _sweeper(**kw):
    from hydra_plugins.mixmerge_optuna_sweeper._impl import OptunaSweeperImpl

    args = dict(sampler=None, direction="maximize", storage=None, study_name="s", n_trials=1, n_jobs=1, seed=0,
                params={}, spaces={}, space=None, constraints=[], domains={}, promotion=None, stale_after_s=None,
                max_failures=None, report=False)
    return OptunaSweeperImpl(**{**args, **kw})


def test_spaces_params_and_their_precedence():
    spaces = {"della": {"params": {"merge.weight": "interval(0.1, 0.9)", "merge.density": "interval(0.2, 0.8)"},
                        "constraints": ["merge.density + merge.epsilon < 1"], "domains": {"merge.weight": [0, 1]}}}
    s = _sweeper(spaces=spaces, space="della", params={"merge.weight": "choice(0.3, 0.7)"},
                 direction=["maximize", "minimize"])
    assert s.params == {"merge.weight": "choice(0.3, 0.7)", "merge.density": "interval(0.2, 0.8)"}
    assert [c.text for c in s.constraints] == ["merge.density + merge.epsilon < 1"]
    assert s.domains == {"merge.weight": [0.0, 1.0]} and s.directions == ["maximize", "minimize"]
    plain = _sweeper(params={"x": "interval(0, 1)"})  # hydra-optuna-sweeper style: params only
    assert plain.params == {"x": "interval(0, 1)"} and plain.constraints == []
    with pytest.raises(ValueError, match="hydra.sweeper.space='ties' has no entry in hydra.sweeper.spaces"):
        _sweeper(spaces=spaces, space="ties")
    with pytest.raises(ValueError, match="neither 'maximize' nor 'minimize'"):
        _sweeper(direction="up")


@pytest.mark.parametrize(("kw", "message"), [
    ({"n_trials": 0}, r"hydra\.sweeper\.n_trials=0 must be >= 1"),
    ({"n_trials": -3}, r"hydra\.sweeper\.n_trials=-3 must be >= 1"),
    ({"max_failures": 0}, r"hydra\.sweeper\.max_failures=0 must be >= 1"),
])
def test_counts_below_one_are_rejected(kw, message):
    with pytest.raises(ValueError, match=message):
        _sweeper(**kw)


def test_zero_trials_fail_before_any_trial_or_study(toy):
    out = toy.run("hparams_search=merge_optuna", "merge=ties", "hydra.sweeper.n_trials=0", check=False)
    assert out.returncode != 0 and "hydra.sweeper.n_trials=0 must be >= 1" in out.stdout, out.stdout[-2000:]
    assert toy.jobs() == [] and not (toy.tmp / "studies.db").exists() and not (toy.tmp / "sweep").exists()
