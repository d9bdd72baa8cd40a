"""Persistent Optuna studies driven by ask/tell: resumable, shareable between processes, failure tolerant.

The Hydra sweeper plugin (``hydra_plugins.mixmerge_optuna_sweeper``) is a thin loop around these helpers:

* ``n_trials`` is the study's total: COMPLETE trials (plus trials still RUNNING in a live process) count,
  so a rerun only runs what is missing and a finished study runs nothing.
* A trial whose owning process died (killed sweep) is marked FAIL on the next start, so it is redone.
* ``ask_trial`` never overshoots ``n_trials`` when several processes share one study: a trial is kept only
  if fewer than ``n_trials`` live-or-complete trials carry a smaller number (numbers are atomic in storage).
* A failed job or a NaN/inf objective becomes a FAIL trial instead of aborting the study.

No Hydra here; only Optuna.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.trial import FrozenTrial, TrialState

OWNER_ATTR = "mixmerge:owner"          # "<host>:<pid>" of the sweep process that asked the trial
SKIPPED_ATTR = "mixmerge:skipped"      # why a trial was closed without running
FAILURE_ATTR = "mixmerge:failure"      # why a job counted as failed
CHEAP_TRIAL_ATTR = "mixmerge:cheap_trial"  # in a promotion study: the cheap-stage trial it re-evaluates


class ConstrainedGridSampler(optuna.samplers.RandomSampler):
    """Marks a grid search. The sweeper enqueues every feasible grid point (see ``space.grid_points``) and
    Optuna serves enqueued values before consulting the sampler, so this sampler never draws on its own;
    unlike Optuna's GridSampler it honours the space's constraints and shares the grid between processes."""


def default_storage_url(root: Path) -> str:
    """The study database used when ``hydra.sweeper.storage`` is unset: one SQLite file under ``outputs/``."""
    return f"sqlite:///{(Path(root) / 'outputs' / 'optuna' / 'studies.db').resolve()}"


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != prefix + ":memory:":
        return Path(url[len(prefix):])
    return None


def storage_url(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; mixmerge's ``cluster`` extra installs psycopg 3, so a
    bare PostgreSQL URL is pointed at it when psycopg2 is absent (an explicit ``+driver`` is kept)."""
    import importlib.util

    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix) and importlib.util.find_spec("psycopg2") is None \
                and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def retry_callback(max_retry: int | None) -> Any:
    """Optuna's callback that re-queues a trial whose heartbeat stopped (its parameters, as a WAITING trial)."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback
    return cls(max_retry=max_retry)


def open_storage(url: str, *, heartbeat_interval_s: int | None = None, grace_period_s: int | None = None,
                 max_retry: int | None = 3) -> optuna.storages.BaseStorage:
    """An RDB storage; for SQLite the folder is created, writers wait up to 60 s for the file lock, and
    the schema is created under a file lock (two sweeps starting at once on a new file race otherwise).

    With ``heartbeat_interval_s``, a RUNNING trial whose heartbeat is older than ``grace_period_s`` (default:
    three intervals) is failed by whichever worker looks next and re-queued up to ``max_retry`` times."""
    url = storage_url(url)
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval_s:
        heartbeat = {"heartbeat_interval": int(heartbeat_interval_s),
                     "grace_period": int(grace_period_s or 3 * int(heartbeat_interval_s)),
                     "heartbeat_stale_trial_callback": retry_callback(max_retry)}
    if heartbeat:  # Optuna flags heartbeats as experimental; the sweeper relies on them knowingly
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning,
                                message=".*heartbeat.*")
    path = _sqlite_path(url)
    if path is None:
        for attempt in range(3):  # a server database: the first two workers may race on the schema
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **heartbeat)
            except Exception:  # noqa: BLE001 - retried, then re-raised
                if attempt == 2:
                    raise
                time.sleep(1.0 + attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}, **heartbeat)


def open_study(storage: str | None, study_name: str, directions: Sequence[str],
               sampler: optuna.samplers.BaseSampler, **storage_kwargs: Any) -> optuna.Study:
    """Create the study or join the existing one of that name (``load_if_exists``); ``storage_kwargs`` go
    to ``open_storage`` (heartbeat)."""
    backend = open_storage(storage, **storage_kwargs) if storage else None
    study = optuna.create_study(storage=backend, study_name=study_name, sampler=sampler,
                                directions=list(directions), load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != [d.lower() for d in directions]:
        raise ValueError(
            f"hydra.sweeper.direction={list(directions)} but study {study_name!r} in {storage} was created with "
            f"{have}; set hydra.sweeper.study_name to a new name or restore the direction")
    return study


def owner_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_orphaned(trial: FrozenTrial, stale_after_s: float | None, now_s: float | None = None) -> bool:
    """A RUNNING trial nobody will finish: its owner was on this host and is dead, or it is older than
    ``stale_after_s`` (the only signal for trials owned by other machines)."""
    if trial.state != TrialState.RUNNING:
        return False
    owner = str(trial.user_attrs.get(OWNER_ATTR, ""))
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
        return True
    if stale_after_s is not None and trial.datetime_start is not None:
        now_s = time.time() if now_s is None else now_s
        return now_s - trial.datetime_start.timestamp() > stale_after_s
    return False


def fail_orphaned_trials(study: optuna.Study, stale_after_s: float | None = None) -> list[int]:
    """Mark orphaned RUNNING trials FAIL so they stop counting against ``n_trials``; return their numbers."""
    failed = []
    retry = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    for t in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
        if is_orphaned(t, stale_after_s):
            study._storage.set_trial_user_attr(t._trial_id, SKIPPED_ATTR, "orphaned: owner process gone")
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
            if retry is not None:  # re-queued like a trial whose heartbeat stopped
                retry(study, t)
    return failed


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose heartbeat stopped (their worker was killed) and re-queue them through the
    storage's callback; return the numbers failed. Nothing happens without a heartbeat."""
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    gone = before - after
    return sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in gone)


def counted_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that count towards ``n_trials``: complete ones and those still running somewhere."""
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING)]


def n_missing(study: optuna.Study, n_trials: int) -> int:
    return max(0, n_trials - len(counted_trials(study.get_trials(deepcopy=False))))


def ask_trial(study: optuna.Study, n_trials: int) -> optuna.Trial | None:
    """Ask a new trial, or return None (closing it as FAIL) if ``n_trials`` are already complete or live."""
    trial = study.ask()
    trial.set_user_attr(OWNER_ATTR, owner_tag())
    before = [t for t in counted_trials(study.get_trials(deepcopy=False)) if t.number < trial.number]
    if len(before) >= n_trials:
        trial.set_user_attr(SKIPPED_ATTR, "surplus: n_trials already reached")
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


def objective_values(value: Any, n_objectives: int) -> tuple[list[float] | None, str]:
    """The job's return as a list of finite floats, or (None, why) when the trial must count as failed."""
    if isinstance(value, Mapping):
        return None, f"expected a number or a list of {n_objectives} numbers, got a mapping"
    values = list(value) if isinstance(value, list | tuple) else [value]
    if len(values) != n_objectives:
        return None, f"expected {n_objectives} objective value(s) (hydra.sweeper.direction), got {len(values)}"
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None, f"objective {v!r} is not a number"
        if not math.isfinite(f):
            return None, f"objective is {f}"
        out.append(f)
    return out, ""


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True when ``a`` is at least as good as ``b`` in every objective and better in one."""
    sign = [1.0 if d.lower() == "maximize" else -1.0 for d in directions]
    ge = all(s * x >= s * y for s, x, y in zip(sign, a, b, strict=True))
    gt = any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))
    return ge and gt


def pareto_ranks(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Non-dominated sorting: rank 0 is the Pareto front, rank 1 the front once rank 0 is removed, ..."""
    ranks = [-1] * len(values)
    left = set(range(len(values)))
    rank = 0
    while left:
        front = {i for i in left if not any(dominates(values[j], values[i], directions) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def select_for_promotion(trials: Sequence[FrozenTrial], directions: Sequence[str],
                         fraction: float) -> list[FrozenTrial]:
    """The best ``ceil(fraction * n)`` complete trials (by Pareto rank, then by the first objective)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        return []
    k = max(1, math.ceil(fraction * len(done)))
    ranks = pareto_ranks([t.values for t in done], directions)
    first_sign = -1.0 if directions[0].lower() == "maximize" else 1.0
    order = sorted(range(len(done)), key=lambda i: (ranks[i], first_sign * done[i].values[0], done[i].number))
    return [done[i] for i in order[:k]]


def study_results(study: optuna.Study) -> dict[str, Any]:
    """What ``optimization_results.yaml`` holds: the best trial, or the Pareto front for several objectives."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out: dict[str, Any] = {"name": study.study_name, "n_complete": len(complete),
                           "directions": [d.name.lower() for d in study.directions]}
    if not complete:
        return out
    if len(study.directions) == 1:
        best = study.best_trial
        out.update(best_params=dict(best.params), best_value=float(best.value), best_trial=best.number)
    else:
        out["solutions"] = [{"trial": t.number, "params": dict(t.params), "values": [float(v) for v in t.values]}
                            for t in sorted(study.best_trials, key=lambda t: t.number)]
    return out
