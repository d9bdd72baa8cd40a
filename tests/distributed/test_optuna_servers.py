"""Optuna studies shared by independent ``run.py -m hparams_search=merge_optuna`` processes, on a real
PostgreSQL server and on SQLite: n_trials exact across workers, and a worker killed mid-trial has its trial
failed by the heartbeat, re-queued and completed by the survivor."""

from __future__ import annotations

import json
import os
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from mixmerge.sweep import study as st
from tests.distributed.conftest import FAST, run_py, start_run_py

pytestmark = pytest.mark.distributed

N_TRIALS = 4


@pytest.fixture(scope="module")
def trained_cache(tmp_path_factory):
    """Specialists trained once (strategy=prepare), so the workers' trials are merges and evaluations."""
    root = tmp_path_factory.mktemp("optuna_cache")
    proc = run_py("strategy=prepare", *FAST, f"cache.root={root / 'cache'}", f"hydra.run.dir={root / 'prepare'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "cache"


@pytest.fixture(params=["postgres", "sqlite"])
def storage_url(request, tmp_path):
    if request.param == "postgres":
        return request.getfixturevalue("postgres").url.replace("+psycopg", "")  # what a user types
    return f"sqlite:///{tmp_path / 'studies.db'}"


def _worker(url: str, study: str, cache, sweep, log, *extra: str):
    return start_run_py("-m", "hparams_search=merge_optuna", "merge=ties", *FAST, "strategy.variants=[merged]",
                        f"cache.root={cache}", f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={study}",
                        f"hydra.sweeper.n_trials={N_TRIALS}", "hydra.sweeper.report=false",
                        "hydra.sweeper.heartbeat_interval_s=1", "hydra.sweeper.grace_period_s=4",
                        f"hydra.sweep.dir={sweep}", *extra, log=log)


def _load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=st.storage_url(url))


def _jobs_run(*sweeps, skip=None) -> list[dict]:
    """The merge parameters of every job that finished, across the workers' sweep dirs (``skip``: a job
    folder whose trial never reached Optuna)."""
    out = []
    for sweep in sweeps:
        for path in sorted(sweep.glob("[0-9]*/metrics.json")):
            if path.parent == skip:
                continue
            out.append(json.loads(path.read_text())["config"]["merge"])
    return out


def _same_runs(jobs: list[dict], trials) -> bool:
    """The finished jobs are exactly the complete trials: each trial's parameters in exactly one job."""
    def as_passed(v):  # the sweeper passes floats rounded to 10 digits on the command line
        return round(v, 10) if isinstance(v, float) else v

    keys = sorted(trials[0].params)
    ran = sorted(json.dumps([j[k.split(".", 1)[1]] for k in keys]) for j in jobs)
    return ran == sorted(json.dumps([as_passed(t.params[k]) for k in keys]) for t in trials)


def _wait(proc, log, timeout_s: float = 900) -> None:
    try:
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log.read_text()[-4000:]


def test_two_workers_share_one_study_exactly(postgres, trained_cache, tmp_path):
    url = postgres.url.replace("+psycopg", "")
    a = _worker(url, "shared", trained_cache, tmp_path / "a", tmp_path / "a.log")
    b = _worker(url, "shared", trained_cache, tmp_path / "b", tmp_path / "b.log")
    _wait(a, tmp_path / "a.log")
    _wait(b, tmp_path / "b.log")
    study = _load(url, "shared")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == N_TRIALS
    # Anything else was asked past n_trials and closed at once, never run.
    for t in study.get_trials(states=(TrialState.FAIL,)):
        assert t.user_attrs[st.SKIPPED_ATTR].startswith("surplus")
    jobs = _jobs_run(tmp_path / "a", tmp_path / "b")
    assert len(jobs) == N_TRIALS and _same_runs(jobs, complete)  # no trial ran twice
    owners = {t.user_attrs[st.OWNER_ATTR].rsplit(":", 1)[1] for t in complete}
    assert owners == {str(a.pid), str(b.pid)}  # both worked on it


def test_killed_worker_trial_is_retried_by_the_survivor(storage_url, trained_cache, tmp_path):
    """Both workers run; once each holds a trial, the victim is killed -9. The survivor's loop sees the
    victim's heartbeat stop, fails that trial, runs its re-queued copy and ends with n_trials complete."""
    name = "killed"
    victim = _worker(storage_url, name, trained_cache, tmp_path / "victim", tmp_path / "victim.log")
    survivor = _worker(storage_url, name, trained_cache, tmp_path / "survivor", tmp_path / "survivor.log")
    deadline = time.time() + 600
    killed_number = killed_params = None
    while killed_number is None and time.time() < deadline and victim.poll() is None:
        time.sleep(0.2)
        try:
            trials = _load(storage_url, name).get_trials()
        except KeyError:  # the study does not exist yet
            continue
        owner = {p: [t for t in trials if t.user_attrs.get(st.OWNER_ATTR, "").endswith(f":{p}")]
                 for p in (victim.pid, survivor.pid)}
        # running with its parameters already sampled (a trial is owned a moment before it is parameterised)
        running = [t for t in owner[victim.pid] if t.state == TrialState.RUNNING and t.params]
        if running and owner[survivor.pid]:
            os.killpg(victim.pid, signal.SIGKILL)  # mid-trial: no cleanup, nobody tells Optuna
            killed_number, killed_params = running[0].number, running[0].params
    victim.wait(timeout=30)
    assert killed_number is not None, (tmp_path / "victim.log").read_text()[-3000:]

    _wait(survivor, tmp_path / "survivor.log")
    study = _load(storage_url, name)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == N_TRIALS
    assert study.trials[killed_number].state == TrialState.FAIL
    log = (tmp_path / "survivor.log").read_text()
    assert f"Trials [{killed_number}] stopped sending heartbeats" in log, log[-3000:]
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed_number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == killed_params
    assert retried[0].user_attrs[st.OWNER_ATTR].endswith(f":{survivor.pid}")
    # Every completed trial ran exactly once; the killed one's folder is left without a result.
    jobs = _jobs_run(tmp_path / "victim", tmp_path / "survivor", skip=tmp_path / "victim" / str(killed_number))
    assert _same_runs(jobs, study.get_trials(states=(TrialState.COMPLETE,)))
