"""A Hydra sweeper on current Optuna: ask/tell, persistent and shareable studies, constraints, two stages.

Why our own plugin instead of hydra-optuna-sweeper: every release of it pins optuna<3, whose SQLite storage
breaks under SQLAlchemy 2, and its loop aborts the study on one failed trial or a NaN, re-proposes the same
trials on resume (fixed seed), counts ``n_trials`` per run rather than per study, and cannot express
``density + epsilon < 1``. The loop here:

    open or join the study -> fail orphaned trials -> while trials are missing:
        fail trials whose heartbeat stopped (re-queued) -> ask a batch -> overrides
        -> launcher (a heartbeat per trial while it runs) -> tell values (or FAIL)
        -> when none is missing but other workers still run some: wait for them (their worker may die)
    -> optional promotion stage -> optimization_results.yaml (+ Pareto CSV/plot) -> sweep report

Hydra imports every plugin module on every run; this one (a leading underscore keeps Hydra's scan out)
is imported by ``sweeper.py`` only when a sweep starts, so plain runs do not pay for importing Optuna.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from mixmerge.files import write_json_atomic, write_text_atomic
from mixmerge.sweep import space as sp
from mixmerge.sweep import study as st

from .config import PromotionConfig

log = logging.getLogger(__name__)
# The sweeper records heartbeats itself (OptunaSweeperImpl._heartbeat) around ask/tell, not Study.optimize.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def spec_from_override(override: Override) -> sp.ParamSpec | None:
    """hydra-optuna-sweeper's syntax -> ParamSpec; None for a fixed value (passed through as an override)."""
    name = override.get_key_element()
    if not override.is_sweep_override():
        return None
    value = override.value()
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        return sp.ParamSpec(name, "categorical", choices=tuple(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if value.shuffle:
            return sp.ParamSpec(name, "categorical",
                                choices=tuple(override.sweep_iterator(transformer=Transformer.encode)))
        # range(start, stop, step) excludes stop, as in Python.
        is_float = any(isinstance(v, float) for v in (value.start, value.stop, value.step))
        step = value.step
        last = value.start + ((value.stop - value.start - 1e-12) // step) * step
        return sp.ParamSpec(name, "float" if is_float else "int", low=value.start, high=last, step=step)
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        is_int = isinstance(value.start, int) and isinstance(value.end, int)
        return sp.ParamSpec(name, "int" if is_int else "float", low=value.start, high=value.end,
                            log="log" in value.tags)
    raise sp.SearchSpaceError(f"hydra.sweeper.params.{name}: unsupported sweep {override.input_line!r}")


def parse_params(lines: Sequence[str]) -> tuple[list[sp.ParamSpec], list[str]]:
    """Split ``key=value`` lines into searched parameters and fixed overrides."""
    by_key: dict[str, sp.ParamSpec | str] = {}
    for override in OverridesParser.create().parse_overrides(list(lines)):
        spec = spec_from_override(override)
        key = override.get_key_element()
        # The last mention of a key wins (command line over config) but keeps its first position, which
        # decides what a constraint clips.
        by_key[key] = override.input_line if spec is None else spec
    specs = [v for v in by_key.values() if isinstance(v, sp.ParamSpec)]
    return specs, [v for v in by_key.values() if isinstance(v, str)]


def launcher_parallelism(config: DictConfig) -> int:
    """How many jobs the configured launcher runs at once: joblib's n_jobs (-1: all cores), submitit's
    array_parallelism, else 1."""
    import os

    for key in ("hydra.launcher.n_jobs", "hydra.launcher.array_parallelism"):
        n = OmegaConf.select(config, key, default=None)
        if n is not None:
            n = int(n)
            return max(1, os.cpu_count() or 1) if n < 0 else max(1, n)
    return 1


def _format(value: Any) -> str:
    return repr(round(value, 10)) if isinstance(value, float) else str(value)


class OptunaSweeperImpl(Sweeper):
    def __init__(self, sampler: Any, direction: Any, storage: str | None, study_name: str, n_trials: int,
                 n_jobs: int, seed: int, params: Any, spaces: Any, space: Any, constraints: Any, domains: Any,
                 promotion: Any,
                 stale_after_s: float | None, max_failures: int | None, report: bool,
                 heartbeat_interval_s: int | None = None, grace_period_s: int | None = None,
                 max_retry: int | None = 3) -> None:
        self.sampler_factory = sampler
        self.directions = [str(d) for d in direction] if OmegaConf.is_list(direction) or isinstance(
            direction, list | tuple) else [str(direction)]
        for d in self.directions:
            if d.lower() not in ("maximize", "minimize"):
                raise ValueError(f"hydra.sweeper.direction: {d!r} is neither 'maximize' nor 'minimize'")
        self.storage = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        if self.n_trials < 1:  # checked here, before any study is opened or any trial launched
            raise ValueError(f"hydra.sweeper.n_trials={n_trials} must be >= 1 (the study's total number of "
                             "trials; a finished study runs nothing more)")
        if max_failures is not None and int(max_failures) < 1:
            raise ValueError(f"hydra.sweeper.max_failures={max_failures} must be >= 1 or null (= n_trials)")
        self.n_jobs = int(n_jobs)
        self.seed = int(seed)
        chosen: Any = {}
        if space is not None:
            if space not in (spaces or {}):
                raise sp.SearchSpaceError(
                    f"hydra.sweeper.space={space!r} has no entry in hydra.sweeper.spaces "
                    f"({sorted(spaces or {})}); add conf/hparams_search/space/{space}.yaml and list it in "
                    "the hparams_search config's defaults")
            chosen = spaces[space]
        self.params = {str(k): str(v) for k, v in {**(chosen.get("params") or {}), **(params or {})}.items()}
        self.constraints = [sp.parse_constraint(str(c))
                            for c in [*(chosen.get("constraints") or []), *(constraints or [])]]
        self.domains = {str(k): [float(x) for x in v]
                        for k, v in {**(chosen.get("domains") or {}), **(domains or {})}.items()}
        # Points to run first (a space's seed, e.g. the layer-wise search's analysis-derived merge); each is
        # enqueued once per study, so a resumed study does not run it again.
        self.enqueue = [{str(k): v for k, v in point.items()} for point in (chosen.get("enqueue") or [])]
        self.promotion = None if promotion is None else PromotionConfig(
            **OmegaConf.to_container(promotion, resolve=True) if OmegaConf.is_config(promotion) else promotion)
        self.stale_after_s = stale_after_s
        self.max_failures = max_failures
        self.report = report
        self.heartbeat_interval_s = int(heartbeat_interval_s) if heartbeat_interval_s else None
        self.storage_kwargs = {"heartbeat_interval_s": self.heartbeat_interval_s,
                               "grace_period_s": grace_period_s, "max_retry": max_retry}
        self.config: DictConfig | None = None
        self._validated = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        if self.n_jobs <= 0:
            self.n_jobs = launcher_parallelism(config)
        if not self.storage:
            self.storage = st.default_storage_url(Path(str(config.hydra.runtime.cwd)))

    # -- the loop ---------------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> list[Any]:
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        specs, fixed = parse_params(lines)
        sampler_name = self._sampler_kind()
        sp.validate_space(specs, self.constraints, self.domains, sampler=sampler_name)
        if self.promotion is not None and not 0 < self.promotion.fraction <= 1:
            raise ValueError(f"hydra.sweeper.promotion.fraction={self.promotion.fraction} must be in (0, 1]")
        cheap = list(self.promotion.cheap_overrides) if self.promotion else []

        study = self._open(self.study_name)
        log.info("Study %r in %s: %d trials so far, n_trials=%d", self.study_name, self.storage,
                 len(study.trials), self.n_trials)
        n_trials = self.n_trials
        if sampler_name == "grid":
            points = sp.grid_points(specs, self.constraints)
            if not points:
                raise sp.SearchSpaceError("hydra.sweeper.params: no grid point satisfies hydra.sweeper.constraints "
                                          f"{[c.text for c in self.constraints]}; widen the choices")
            n_trials = min(n_trials, len(points))
            self._enqueue_missing(study, points)
            specs = [sp.ParamSpec(s.name, "categorical", choices=tuple(sp.grid_values(s))) for s in specs]
        elif self.enqueue:
            sp.check_points(specs, self.enqueue)
            self._enqueue_missing(study, self.enqueue)
        returns = self._run_stage(study, n_trials, specs, fixed + cheap, job_offset=0,
                                  grid=sampler_name == "grid")

        final = study
        if self.promotion is not None:
            final = self._promote(study, fixed)
        self._write_results(final)
        if self.report:
            self._write_report()
        return returns

    def _sampler_kind(self) -> str:
        target = getattr(self.sampler_factory, "func", self.sampler_factory)
        if target is st.ConstrainedGridSampler:
            return "grid"
        if target is optuna.samplers.CmaEsSampler:
            return "cmaes"
        return "other"

    def _open(self, name: str) -> optuna.Study:
        probe = st.open_study(self.storage, name, self.directions, optuna.samplers.RandomSampler(),
                              **self.storage_kwargs)
        st.fail_orphaned_trials(probe, self.stale_after_s)
        # Seed with the number of trials already there, so a resumed study proposes new points.
        sampler = self.sampler_factory(seed=self.seed + len(probe.trials))
        return st.open_study(self.storage, name, self.directions, sampler, **self.storage_kwargs)

    def _enqueue_missing(self, study: optuna.Study, points: list[dict[str, Any]]) -> None:
        # A WAITING trial is an enqueued point (fixed_params) or a re-queued one (params, from a retry).
        pending = [t.params if t.state != TrialState.WAITING else t.system_attrs.get("fixed_params", t.params)
                   for t in study.get_trials(deepcopy=False)
                   if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)]
        seen = {tuple(sorted(p.items())) for p in pending}
        for point in points:
            if tuple(sorted(point.items())) not in seen:
                study.enqueue_trial(point)

    def _run_stage(self, study: optuna.Study, n_trials: int, specs: list[sp.ParamSpec], extra: list[str],
                   job_offset: int, grid: bool = False) -> list[Any]:
        returns: list[Any] = []
        failures = 0
        max_failures = self.max_failures if self.max_failures is not None else max(n_trials, 1)
        while True:
            stale = st.fail_stale_trials(study)
            if stale:
                log.warning("Trials %s stopped sending heartbeats (worker killed?): failed and re-queued", stale)
            if st.n_missing(study, n_trials) == 0:
                if self._wait_for_other_workers(study, n_trials):
                    continue
                break
            batch = []
            for _ in range(min(self.n_jobs, st.n_missing(study, n_trials))):
                if grid and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    break  # every grid point is done or taken; a failed one is retried on the next run
                trial = st.ask_trial(study, n_trials)
                if trial is None:
                    break
                if self.heartbeat_interval_s:  # at once: a trial that never beat could never go stale
                    study._storage.record_heartbeat(trial._trial_id)
                values = sp.suggest_params(trial, specs, self.constraints)
                batch.append((trial, tuple(f"{k}={_format(v)}" for k, v in values.items()) + tuple(extra)))
            if not batch:
                break
            with self._heartbeat([t._trial_id for t, _ in batch], study):
                results = self._launch([(t.number, o) for t, o in batch], job_offset)
            returns.extend(results)
            for (trial, _), ret in zip(batch, results, strict=True):
                failures += not self._tell(study, trial, ret)
            if failures >= max_failures:
                log.error("Stopping: %d failed trials in this run (hydra.sweeper.max_failures=%d)",
                          failures, max_failures)
                break
        return returns

    def _heartbeat(self, trial_ids: list[int], study: optuna.Study) -> Any:
        """A thread recording the batch's heartbeats while its jobs run, so other workers can tell a live
        trial from one whose worker was killed (``hydra.sweeper.heartbeat_interval_s``)."""
        import contextlib

        if not self.heartbeat_interval_s:
            return contextlib.nullcontext()
        storage, interval = study._storage, self.heartbeat_interval_s
        stop = threading.Event()

        def beat() -> None:
            while True:
                for trial_id in trial_ids:
                    storage.record_heartbeat(trial_id)
                if stop.wait(interval):
                    return

        @contextlib.contextmanager
        def running():
            thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()

        return running()

    def _wait_for_other_workers(self, study: optuna.Study, n_trials: int) -> bool:
        """No trial is missing, but some still run in other workers: wait while their heartbeats go on.
        True when one of them died (its trial is re-queued and this worker should run it), False when the
        study is done. Without heartbeats a dead worker is invisible, so there is nothing to wait for."""
        if not self.heartbeat_interval_s:
            return False
        announced = False
        while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not announced:
                log.info("All %d trials are taken; waiting for those still running in other workers", n_trials)
                announced = True
            time.sleep(self.heartbeat_interval_s)
            stale = st.fail_stale_trials(study)
            if stale:
                log.warning("Trials %s stopped sending heartbeats (worker killed?): failed and re-queued", stale)
            if st.n_missing(study, n_trials) > 0:
                return True
        return False

    def _launch(self, batch: list[tuple[int, tuple[str, ...]]], job_offset: int) -> list[Any]:
        """Launch runs of consecutive trial numbers together, so each job's number is its trial's number
        (a resumed sweep never overwrites an earlier job's folder)."""
        out: list[Any] = []
        start = 0
        for i in range(1, len(batch) + 1):
            if i == len(batch) or batch[i][0] != batch[i - 1][0] + 1:
                chunk = [overrides for _, overrides in batch[start:i]]
                if not self._validated:  # composing costs ~0.5 s; one check per run catches bad keys
                    self.validate_batch_is_legal(chunk[:1])
                    self._validated = True
                out.extend(self.launcher.launch(chunk, initial_job_idx=job_offset + batch[start][0]))
                start = i
        return out

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> bool:
        try:
            value = ret.return_value  # re-raises the job's exception when it failed
        except Exception as e:  # noqa: BLE001 - any job failure is a FAIL trial, not a dead study
            trial.set_user_attr(st.FAILURE_ATTR, f"{type(e).__name__}: {e}"[:500])
            study.tell(trial, state=TrialState.FAIL)
            log.warning("Trial %d failed: %s", trial.number, e)
            return False
        values, why = st.objective_values(value, len(self.directions))
        if values is None:
            trial.set_user_attr(st.FAILURE_ATTR, why)
            study.tell(trial, state=TrialState.FAIL)
            log.warning("Trial %d counted as failed: %s", trial.number, why)
            return False
        study.tell(trial, values)
        return True

    def _promote(self, cheap_study: optuna.Study, fixed: list[str]) -> optuna.Study:
        """Re-run the best cheap trials with ``full_overrides``; their results form ``<study_name>.full``.
        A cheap trial already evaluated there is skipped, so a resumed sweep only runs what is missing."""
        assert self.promotion is not None
        chosen = st.select_for_promotion(cheap_study.get_trials(deepcopy=False), self.directions,
                                         self.promotion.fraction)
        full = self._open(f"{self.study_name}.full")
        done = {t.user_attrs.get(st.CHEAP_TRIAL_ATTR) for t in full.get_trials(deepcopy=False)
                if t.state == TrialState.COMPLETE}
        todo = [t for t in chosen if t.number not in done]
        log.info("Promotion: %d of %d cheap trials chosen, %d still to evaluate fully",
                 len(chosen), len(cheap_study.trials), len(todo))
        for cheap in todo:
            overrides = tuple(f"{k}={_format(v)}" for k, v in cheap.params.items())
            overrides += tuple(fixed) + tuple(self.promotion.full_overrides)
            [ret] = self._launch([(cheap.number, overrides)], job_offset=self.promotion.job_offset)
            attrs = {st.CHEAP_TRIAL_ATTR: cheap.number, "cheap_values": list(cheap.values)}
            try:
                values, why = st.objective_values(ret.return_value, len(self.directions))
            except Exception as e:  # noqa: BLE001 - a failed full run is recorded, the sweep goes on
                values, why = None, f"{type(e).__name__}: {e}"[:500]
            if values is None:
                attrs[st.FAILURE_ATTR] = why
                log.warning("Full evaluation of cheap trial %d failed: %s", cheap.number, why)
            full.add_trial(optuna.trial.create_trial(
                params=dict(cheap.params), distributions=dict(cheap.distributions), values=values,
                state=TrialState.COMPLETE if values is not None else TrialState.FAIL, user_attrs=attrs))
        return full

    # -- outputs ----------------------------------------------------------------------------------------
    def _write_results(self, study: optuna.Study) -> None:
        results = st.study_results(study)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        path = write_text_atomic(self.sweep_dir / "optimization_results.yaml",
                                 OmegaConf.to_yaml(OmegaConf.create(results)))
        write_json_atomic(self.sweep_dir / "optimization_results.json", results)
        if "solutions" in results:
            from mixmerge.sweep.report import write_pareto

            others = [t.values for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
            write_pareto(results["solutions"], self.directions, self.sweep_dir, others=others)
        log.info("Results of study %r: %s", study.study_name, path)

    def _write_report(self) -> None:
        from mixmerge.sweep.report import collect_metrics, report_sweep

        if collect_metrics(self.sweep_dir):
            maximize = self.directions[0].lower() == "maximize"
            directions = self.directions if len(self.directions) == 2 else ("maximize", "maximize")
            paths = report_sweep(self.sweep_dir, maximize=maximize, directions=directions)
            log.info("Sweep report: %s", paths.get("markdown"))
