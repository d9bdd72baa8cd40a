"""Study helpers: objective parsing, Pareto ranks, promotion choice, orphans, no overshoot of n_trials."""

import math
import socket
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from mixmerge.sweep import study as st

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_objective_values():
    assert st.objective_values(0.5, 1) == ([0.5], "")
    assert st.objective_values([1, 2.5], 2) == ([1.0, 2.5], "")
    assert st.objective_values(float("nan"), 1) == (None, "objective is nan")
    assert st.objective_values([1.0, math.inf], 2)[0] is None
    assert "expected 2 objective value(s)" in st.objective_values(0.5, 2)[1]
    assert "not a number" in st.objective_values("high", 1)[1]
    assert st.objective_values(None, 1)[0] is None


def test_pareto_ranks_and_promotion():
    values = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.4, 0.4), (0.2, 0.1)]
    assert st.pareto_ranks(values, ["maximize", "maximize"]) == [0, 0, 0, 1, 2]
    assert st.pareto_ranks(values, ["minimize", "minimize"]) == [0, 0, 2, 1, 0]
    study = optuna.create_study(directions=["maximize", "maximize"])
    for v in values:
        t = study.ask()
        study.tell(t, v)
    chosen = st.select_for_promotion(study.trials, ["maximize", "maximize"], fraction=0.5)
    # ceil(0.5 * 5) = 3: the whole rank-0 front, best first objective first.
    assert [t.number for t in chosen] == [0, 2, 1]
    single = optuna.create_study(direction="minimize")
    for v in [3.0, 1.0, 2.0, 0.5]:
        t = single.ask()
        single.tell(t, v)
    assert [t.number for t in st.select_for_promotion(single.trials, ["minimize"], 0.25)] == [3]


def test_ask_trial_never_exceeds_n_trials(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    first = st.ask_trial(study, 2)
    second = st.ask_trial(study, 2)
    assert first is not None and second is not None
    assert st.n_missing(study, 2) == 0
    assert st.ask_trial(study, 2) is None  # two live trials already hold the budget
    surplus = study.trials[-1]
    assert surplus.state == TrialState.FAIL and st.SKIPPED_ATTR in surplus.user_attrs
    study.tell(first, state=TrialState.FAIL)
    assert st.n_missing(study, 2) == 1


def test_orphaned_trials_are_failed(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    orphan = study.ask()
    orphan.set_user_attr(st.OWNER_ATTR, f"{socket.gethostname()}:{int(dead.stdout)}")
    mine = st.ask_trial(study, 5)
    remote = study.ask()
    remote.set_user_attr(st.OWNER_ATTR, "another-host:1")
    assert st.fail_orphaned_trials(study) == [orphan.number]
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]
    # Trials of other hosts only go stale by age.
    frozen = study.trials[remote.number]
    later = frozen.datetime_start.timestamp() + 3601
    assert st.is_orphaned(frozen, stale_after_s=3600, now_s=later)
    assert not st.is_orphaned(frozen, stale_after_s=3600, now_s=later - 2)
    assert mine is not None and not st.is_orphaned(study.trials[mine.number], None)


def test_open_study_rejects_a_direction_change(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 's.db'}"  # the folder is created
    st.open_study(url, "s", ["maximize"], optuna.samplers.RandomSampler())
    with pytest.raises(ValueError, match="was created with \\['maximize'\\]"):
        st.open_study(url, "s", ["maximize", "minimize"], optuna.samplers.RandomSampler())


def test_study_results_single_and_multi():
    study = optuna.create_study(directions=["maximize", "maximize"], study_name="m")
    for v in [(1.0, 0.0), (0.4, 0.4), (0.0, 1.0)]:
        t = study.ask()
        t.suggest_float("merge.weight", 0, 1)
        study.tell(t, v)
    res = st.study_results(study)
    assert [s["trial"] for s in res["solutions"]] == [0, 1, 2]
    t = study.ask()
    study.tell(t, (0.3, 0.3))
    assert len(st.study_results(study)["solutions"]) == 3  # (0.3, 0.3) is dominated by (0.4, 0.4)
    single = optuna.create_study(direction="minimize", study_name="one")
    for v in [2.0, 1.0]:
        t = single.ask()
        t.suggest_float("x", 0, 1)
        single.tell(t, v)
    res = st.study_results(single)
    assert res["best_value"] == 1.0 and res["best_trial"] == 1 and set(res["best_params"]) == {"x"}
