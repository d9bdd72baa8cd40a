"""Config validation at the edge: every wrong value is reported with its field and the fix, before any work."""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixmerge.dtypes import DTYPE_NAMES

log = logging.getLogger(__name__)

# The config tree run.py composes; the keys its YAML files define are the only ones a run may carry.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Folders under conf/ that are not job config groups (Hydra's own settings, the sweeper's search spaces).
_NOT_JOB_CONFIG = ("hydra", "hparams_search/space")
# Maps whose keys are names the user chooses (tasks, metrics, variant folders): any key is fine below them.
FREE_FORM = frozenset({"task.tasks", "task.mixture.weights", "eval.aggregate.terms", "eval.aggregate.weights",
                       "analysis.paths", "analysis.check.task_metrics"})
# Keys the code reads that no YAML sets by default, so they are only ever added with `+`.
KEYS_WITHOUT_YAML = frozenset({"model.path",  # model.source=local: the HF folder
                               "merge.check_finite"})  # false skips the merged tensors' finiteness check


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and how to fix it."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_model(model: Mapping[str, Any]) -> None:
    from mixmerge.models import SOURCES

    _require(model.get("source") in SOURCES, f"model.source={model.get('source')!r} must be one of {SOURCES}")
    _require(model.get("dtype") in DTYPE_NAMES, f"model.dtype={model.get('dtype')!r} must be one of {DTYPE_NAMES}")
    _require(model.get("prompt_style") in ("completion", "chat"),
             f"model.prompt_style={model.get('prompt_style')!r} must be 'completion' or 'chat'")
    if model["source"] == "hub":
        _require(bool(model.get("hub_id")), "model.hub_id is required when model.source=hub")
    if model["source"] == "local":
        _require(bool(model.get("path")), "model.path is required when model.source=local (an HF folder)")


def validate_training(finetune: Mapping[str, Any], trainer: Mapping[str, Any]) -> None:
    from mixmerge.train.adapters import METHODS

    _require(finetune.get("method") in METHODS, f"finetune.method={finetune.get('method')!r} must be one of {METHODS}")
    _require(float(finetune["lr"]) > 0, f"finetune.lr={finetune['lr']} must be > 0")
    for field in ("batch_size", "accumulate_grad_batches"):
        _require(int(finetune[field]) >= 1, f"finetune.{field}={finetune[field]} must be >= 1")
    _require(int(finetune["max_length"]) >= 16, f"finetune.max_length={finetune['max_length']} must be >= 16")
    _require(0.0 <= float(finetune["min_lr_ratio"]) <= 1.0,
             f"finetune.min_lr_ratio={finetune['min_lr_ratio']} must be within [0, 1]")
    _require(int(finetune["warmup_steps"]) >= 0, f"finetune.warmup_steps={finetune['warmup_steps']} must be >= 0")
    _require(int(trainer["max_steps"]) >= 1, f"trainer.max_steps={trainer['max_steps']} must be >= 1")
    _require(int(trainer["checkpoint_every_n_steps"]) >= 1,
             f"trainer.checkpoint_every_n_steps={trainer['checkpoint_every_n_steps']} must be >= 1")
    if finetune["method"] != "full":
        lora = finetune["lora"]
        _require(int(lora["r"]) >= 1, f"finetune.lora.r={lora['r']} must be >= 1")
        _require(0.0 <= float(lora["dropout"]) < 1.0, f"finetune.lora.dropout={lora['dropout']} must be in [0, 1)")
        _require(bool(lora["target_modules"]), "finetune.lora.target_modules is empty; name the modules to adapt")


def validate_task(task: Mapping[str, Any]) -> None:
    tasks = task.get("tasks") or {}
    _require(bool(tasks), "task.tasks is empty; pick a task config such as task=mixture or task=codegen")
    weights = (task.get("mixture") or {}).get("weights") or {}
    unknown = set(weights) - set(tasks)
    _require(not unknown, f"task.mixture.weights names {sorted(unknown)}, which are not in task.tasks {sorted(tasks)}")
    _require(all(float(w) >= 0 for w in weights.values()), "task.mixture.weights must be >= 0")


def _merge_tree(into: dict, node: Any) -> None:
    """Union of declared keys: a dict merges key by key; anything else (null, a value, a list) at a path
    makes it open (``None``), since a user may give it any structure."""
    for key, value in node.items():
        if key in ("defaults", "hydra"):
            continue
        if isinstance(value, dict) and (key not in into or isinstance(into[key], dict)):
            _merge_tree(into.setdefault(key, {}), value)
        elif not isinstance(value, dict) or key not in into:
            into[key] = None


def primary_conf_dir() -> Path:
    """The folder the running Hydra app composed from (run.py's ``conf``), else the repository's."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path)
    return CONF_DIR


@functools.lru_cache(maxsize=4)
def declared_keys(conf_dir: Path) -> dict:
    """The tree of keys that any YAML under ``conf_dir`` defines, each file at its package (its group, or
    the top level for ``@package _global_`` files such as experiments and hparams_search presets)."""
    import yaml

    tree: dict = {}
    for path in sorted(conf_dir.rglob("*.yaml")):
        rel = path.relative_to(conf_dir)
        if any(rel.as_posix().startswith(f"{skip}/") for skip in _NOT_JOB_CONFIG):
            continue
        text = path.read_text()
        node = yaml.safe_load(text) or {}
        if not isinstance(node, dict):
            continue
        is_global = len(rel.parts) == 1 or any("@package _global_" in line for line in text.splitlines()[:3])
        _merge_tree(tree if is_global else tree.setdefault(rel.parts[0], {}), node)
    for dotted in KEYS_WITHOUT_YAML:
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node.setdefault(leaf, None)
    return tree


def _unknown_keys(cfg: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> list[tuple[str, list]]:
    """``(dotted key, the keys allowed beside it)`` for each key of ``cfg`` that ``schema`` does not define."""
    out = []
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            out.append((dotted, sorted(map(str, schema))))
        elif isinstance(schema[key], dict) and isinstance(value, Mapping) and dotted not in FREE_FORM:
            out += _unknown_keys(value, schema[key], f"{dotted}.")
    return out


def validate_known_keys(cfg: Mapping[str, Any], conf_dir: Path | None = None) -> None:
    """Refuse keys that no config file defines (a typo added with Hydra's ``+``, e.g. ``+merge.desnity=0.3``,
    would otherwise be silently ignored), suggesting the closest defined key."""
    conf_dir = Path(conf_dir) if conf_dir is not None else primary_conf_dir()
    if not conf_dir.is_dir():
        log.warning("config keys not checked: no config folder at %s to compare them with", conf_dir)
        return
    unknown = _unknown_keys({k: v for k, v in cfg.items() if k != "hydra"}, declared_keys(conf_dir))
    if not unknown:
        return
    dotted, allowed = unknown[0]
    parent, _, leaf = dotted.rpartition(".")
    close = difflib.get_close_matches(leaf, allowed, n=1, cutoff=0.6)
    hint = f"did you mean {'.'.join(filter(None, (parent, close[0])))}?" if close else \
        f"{parent or 'the top level'} defines {allowed}"
    where = f"conf/{dotted.split('.')[0]}/*.yaml" if parent else "conf/config.yaml"
    more = f" (and {len(unknown) - 1} more unknown: {[d for d, _ in unknown[1:4]]})" if len(unknown) > 1 else ""
    raise ConfigError(f"unknown config key {dotted}: {hint} No config defines it, so it would be silently "
                      f"ignored; fix the name, or define the key in {where} if it is new{more}")


def _check_replicates(rep: Any) -> None:
    """``replicates``: null, a count of at least 1, or a non-empty list of distinct integer seeds."""
    fix = "use replicates=null (one seed), replicates=N (N >= 1) or replicates=[s1,s2,...] (distinct integers)"
    if rep is None:
        return
    if isinstance(rep, bool) or not isinstance(rep, int | list | tuple):
        raise ConfigError(f"replicates={rep!r} is not a count or a list of seeds: {fix}")
    if isinstance(rep, int):
        _require(rep >= 1, f"replicates={rep} must be at least 1: {fix}")
        return
    _require(len(rep) > 0 and all(isinstance(s, int) and not isinstance(s, bool) for s in rep)
             and len(set(rep)) == len(rep), f"replicates={list(rep)!r}: {fix}")


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check every group a strategy will use; raise ConfigError naming the first bad field."""
    from mixmerge.strategy import STRATEGIES

    validate_known_keys(cfg)
    if cfg.get("objective"):
        from mixmerge.sweep.objective import validate_objective

        try:  # objective.statistic / direction checked before any training, not when the run returns
            validate_objective(cfg["objective"])
        except ValueError as err:
            raise ConfigError(str(err)) from None

    _check_replicates(cfg.get("replicates"))
    from mixmerge.precision import PRECISIONS

    precision = (cfg.get("trainer") or {}).get("precision", "auto")
    _require(precision in PRECISIONS, f"trainer.precision={precision!r} is not one of {PRECISIONS}; "
                                      "use trainer.precision=auto to let the hardware decide")
    rebuild = (cfg.get("cache") or {}).get("rebuild_broken", False)
    _require(isinstance(rebuild, bool), f"cache.rebuild_broken={rebuild!r} must be true (rebuild a damaged "
                                        "cached artifact) or false (fail naming it)")
    strategy = cfg["strategy"]
    _require(strategy.get("name") in STRATEGIES, f"strategy.name={strategy.get('name')!r} must be one of {sorted(STRATEGIES)}")
    if strategy["name"] == "score":
        ev = cfg["eval"]
        _require(bool(ev.get("samples") or (ev.get("bleu") or {}).get("reference")),
                 "strategy=score needs eval.samples=FILE.jsonl or eval.bleu.reference=REF eval.bleu.predictions=PRED")
        return
    if strategy["name"] == "report":
        _require(strategy.get("sweep_dir") not in (None, "???"),
                 "strategy=report needs strategy.sweep_dir=DIR (the multirun's sweep directory)")
        return
    if strategy["name"] in ("analyze", "rounds"):
        validate_model(cfg["model"])
        return
    if strategy["name"] == "merge":
        from mixmerge.merge import validate_merge_config

        validate_merge_config(cfg["merge"], n_models=len(cfg["merge"].get("models") or []) or None)
        _require_standalone_statistics(cfg["merge"])
        return
    validate_model(cfg["model"])
    if strategy["name"] == "methods":
        from mixmerge.strategy.methods import plan_candidates

        validate_training(cfg["finetune"], cfg["trainer"])
        validate_task(cfg["task"])
        try:  # every candidate's every grid point, before the specialists are trained
            plan_candidates(strategy, cfg["merge"], len(cfg["task"]["tasks"]))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    resamples = (cfg["eval"].get("bootstrap") or {}).get("resamples", 2000)
    _require(isinstance(resamples, int) and not isinstance(resamples, bool) and resamples >= 1000,
             f"eval.bootstrap.resamples={resamples!r} must be an integer of at least 1000 (the intervals' "
             "percentiles need that many resamples to be stable); e.g. eval.bootstrap.resamples=2000")
    cache_eval = cfg["eval"].get("cache", True)
    _require(isinstance(cache_eval, bool),
             f"eval.cache={cache_eval!r} must be true (reuse a variant's evaluation) or false (evaluate again)")
    if cfg["eval"].get("enabled", True) and (cfg["eval"].get("lm_eval") or {}).get("tasks"):
        from mixmerge.eval.lm_eval_tasks import validate_lm_eval

        try:  # issue 18: task names and folders checked before any training
            validate_lm_eval(cfg["eval"]["lm_eval"])
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(str(err)) from None
    wanted = set(strategy.get("variants") or [])
    allowed = {"base", "specialists", "mixture", "merged"}
    _require(wanted <= allowed, f"strategy.variants={sorted(wanted)} may only hold {sorted(allowed)}")
    if wanted - {"base"}:
        validate_training(cfg["finetune"], cfg["trainer"])
    validate_task(cfg["task"])
    if "mixture" in wanted:
        _require(len(cfg["task"]["tasks"]) >= 2 or bool(cfg["task"].get("mixture")),
                 "strategy uses a mixture but task.mixture is not set")
    if "merged" in wanted:
        from mixmerge.merge import validate_merge_config

        validate_merge_config(cfg["merge"], n_models=len(cfg["task"]["tasks"]))
        _require((cfg["merge"].get("output_format") or "model") == "model",
                 "merge.output_format=adapter writes a peft adapter, which this strategy cannot evaluate as a "
                 "merged model; merge LoRA adapters into an adapter with strategy=merge (merge.base, merge.models)")
        layerwise = cfg.get("layerwise") or {}
        if layerwise.get("point") is not None:  # a layer-wise trial (hparams_search=merge_optuna_layerwise)
            from mixmerge.sweep.layerwise import validate_layerwise

            try:
                validate_layerwise(layerwise, cfg["merge"], len(cfg["task"]["tasks"]))
            except ValueError as err:
                raise ConfigError(str(err)) from None


def _require_standalone_statistics(merge_cfg: Mapping[str, Any]) -> None:
    """The data-aware methods (RegMean, RegMean++) need their statistics given in a standalone merge: it has no
    task data to compute them from."""
    from mixmerge.merge.registry import get_method

    method = merge_cfg.get("method")
    if method is not None and get_method(str(method)).kind == "regmean":
        _require(bool(merge_cfg.get("gram_paths")),
                 f"strategy=merge merge={method} needs merge.gram_paths='[GRAMS_A,GRAMS_B]': one folder of Gram "
                 f"matrices per model, each of that model's linear-layer inputs on its own task data "
                 f"(mixmerge.merge.gram.compute_grams"
                 f"{'; RegMean++: compute_regmean_plus_grams' if method == 'regmean_plus' else ''}). The standalone "
                 f"merge has no task data; strategy=compare computes and caches them from the specialists' training "
                 f"data")
