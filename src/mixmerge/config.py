"""Config validation at the edge: every wrong value is reported with its field and the fix, before any work."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and how to fix it."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_model(model: Mapping[str, Any]) -> None:
    from mixmerge.models import SOURCES

    _require(model.get("source") in SOURCES, f"model.source={model.get('source')!r} must be one of {SOURCES}")
    _require(model.get("dtype") in ("float32", "bfloat16", "float16"),
             f"model.dtype={model.get('dtype')!r} must be float32, bfloat16 or float16")
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


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check every group a strategy will use; raise ConfigError naming the first bad field."""
    from mixmerge.strategy import STRATEGIES

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
        return
    validate_model(cfg["model"])
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
