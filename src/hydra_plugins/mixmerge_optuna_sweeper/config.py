"""Structured configs of the mixmerge Optuna sweeper, registered as ``hydra/sweeper=mixmerge_optuna`` and
``hydra/sweeper/sampler={tpe,cmaes,random,grid,nsgaii}``.

The search-space syntax is hydra-optuna-sweeper's (``params: {merge.weight: interval(0.1, 0.9),
merge.method: choice(ties, dare), merge.k: range(1, 5)}``, ``tag(log, interval(...))`` for log scale), so
its configs port over; the extra keys (``constraints``, ``domains``, ``promotion``, ``stale_after_s``) are
ours. Samplers are built as partials so the sweeper can seed them with ``seed + trials already in the
study``: a resumed study then does not re-propose its first trials.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConfig:
    _target_: str = "optuna.samplers.TPESampler"
    _partial_: bool = True


@dataclass
class TPESamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.TPESampler"
    n_startup_trials: int = 10
    multivariate: bool = True
    # Pending trials of parallel jobs/processes get a pessimistic value, so batches do not collapse.
    constant_liar: bool = True


@dataclass
class CmaEsSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.CmaEsSampler"
    n_startup_trials: int = 1
    restart_strategy: Any = None


@dataclass
class RandomSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class NSGAIISamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int = 20


@dataclass
class GridSamplerConfig(SamplerConfig):
    _target_: str = "mixmerge.sweep.study.ConstrainedGridSampler"


@dataclass
class PromotionConfig:
    """Two-stage trials: every trial runs with ``cheap_overrides``; once the study has ``n_trials`` cheap
    results, the best ``fraction`` are re-run with ``full_overrides`` in the study ``<study_name>.full``."""

    fraction: float = 0.25
    cheap_overrides: list[str] = field(default_factory=list)
    full_overrides: list[str] = field(default_factory=list)
    # Job numbers (sweep subdirs) of full evaluations start here, after the cheap trials' numbers.
    job_offset: int = 10000


@dataclass
class MixmergeOptunaSweeperConf:
    _target_: str = "hydra_plugins.mixmerge_optuna_sweeper.sweeper.MixmergeOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}])
    sampler: Any = None
    # "maximize"/"minimize", or a list of them for a multi-objective study (the job returns that many).
    direction: Any = "maximize"
    # Database URL shared by every run of the study; null: sqlite file outputs/optuna/studies.db.
    storage: Any = None
    study_name: str = "mixmerge"
    # The study's total: reruns only run the missing trials.
    n_trials: int = 20
    # Trials per launcher batch (<= 0: the launcher's n_jobs if it has one, else 1); parallelism comes
    # from the launcher (joblib/submitit).
    n_jobs: int = 1
    seed: int = 0
    params: dict[str, str] = field(default_factory=dict)
    # Named spaces ({name: {params, constraints, domains}}) and the one to search, e.g. ${merge.method};
    # its entries come first, then params/constraints/domains above add to them.
    spaces: dict[str, Any] = field(default_factory=dict)
    space: Any = None
    # Linear constraints such as "merge.density + merge.epsilon < 1", honoured by construction.
    constraints: list[str] = field(default_factory=list)
    # Valid domain per parameter, e.g. {merge.density: [0, 1]}; a searched range outside is rejected.
    domains: dict[str, list[float]] = field(default_factory=dict)
    promotion: Any = None
    # A RUNNING trial older than this (seconds) whose owner is on another host counts as dead; null: never.
    stale_after_s: Any = None
    # Each worker records a heartbeat of its running trials every this many seconds; a trial silent for
    # grace_period_s (null: 3 intervals) is failed by another worker and re-queued up to max_retry times,
    # so a killed worker's trial is redone. null: no heartbeat (a dead worker on another host goes unseen).
    heartbeat_interval_s: Any = 60
    grace_period_s: Any = None
    max_retry: Any = 3
    # Stop after this many failed trials in one run (null: n_trials), so a broken job cannot loop forever.
    max_failures: Any = None
    # Write report.csv/.md and plots from the jobs' metrics.json under the sweep dir at the end.
    report: bool = True


cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="mixmerge_optuna", node=MixmergeOptunaSweeperConf, provider="mixmerge")
for _name, _node in {"tpe": TPESamplerConfig, "cmaes": CmaEsSamplerConfig, "random": RandomSamplerConfig,
                     "nsgaii": NSGAIISamplerConfig, "grid": GridSamplerConfig}.items():
    cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="mixmerge")
