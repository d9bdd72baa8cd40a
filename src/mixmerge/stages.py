"""The stages every strategy is built from: base → specialists and mixture (cached) → merge → evaluation.

Each ``ensure_*`` returns a cached artifact when its config was seen before, so a sweep trains each
specialist once and spends its time on merges and evaluation. Strategies (``mixmerge.strategy.*``) call
these in the order their story needs; the stages know nothing about which strategy runs them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mixmerge.cache import ArtifactStore, content_key
from mixmerge.files import write_json_atomic
from mixmerge.models import BaseModel, load_model, load_tokenizer, resolve_base_model
from mixmerge.tracking import Tracker

log = logging.getLogger(__name__)

# Trainer fields that change the trained weights; the rest (logging, progress bars, threads) do not.
TRAINER_KEYS_THAT_MATTER = ("max_steps", "precision", "accelerator")


@dataclass(frozen=True)
class Variant:
    """One evaluated model: ``base``, ``specialist/<task>``, ``mixture`` or ``merged``.

    ``load`` builds the live model when there is no folder to load (an in-memory merge).
    """

    name: str
    path: Path | None
    key: str
    load: Callable[[], Any] | None = field(default=None, compare=False)
    tokenizer: Path | None = None  # defaults to ``path``
    # What metrics.json records beside the variant's metrics (a layer-wise merge: its per-block values).
    details: Mapping[str, Any] | None = field(default=None, compare=False)


def ensure_base(cfg: Mapping[str, Any], store: ArtifactStore) -> BaseModel:
    """The base model as an HF folder (converted or built once, then cached)."""
    base = resolve_base_model(cfg["model"], store)
    log.info("base model %s from %s", base.name, base.origin)
    return base


def precision_of(cfg: Mapping[str, Any]) -> tuple[str, str]:
    """``trainer.precision`` resolved on this machine (``auto``: bf16-mixed where the hardware computes
    bf16 natively, else 32-true; ``models/precision.py``), and why."""
    from mixmerge.precision import resolve_precision

    return resolve_precision(str(cfg["trainer"]["precision"]), accelerator=str(cfg["trainer"]["accelerator"]))


def evaluation_dtype(cfg: Mapping[str, Any]) -> str | None:
    """``"bfloat16"`` when evaluation forward passes of a float32 model run under bf16 autocast (the resolved
    precision is bf16-mixed), else None: evaluation computes like training."""
    from mixmerge.precision import compute_dtype_name

    mixed = precision_of(cfg)[0].endswith("-mixed") and cfg["model"]["dtype"] == "float32"
    return compute_dtype_name(precision_of(cfg)[0]) if mixed else None


def training_config(cfg: Mapping[str, Any], train_seed: int | None = None) -> dict:
    """What determines a trained model besides its data: identical for every specialist and the mixture.

    ``train_seed`` (a replicate's seed, ``replicates``) replaces ``cfg.seed`` for training only: the data
    splits stay those of ``cfg.seed``, so every replicate is evaluated on the same examples.
    """
    return {
        "finetune": cfg["finetune"],
        # ``auto`` enters the key as what it resolves to here, so a bf16 model never passes for an fp32 one
        "trainer": {**{k: cfg["trainer"][k] for k in TRAINER_KEYS_THAT_MATTER}, "precision": precision_of(cfg)[0]},
        "seed": cfg["seed"] if train_seed is None else int(train_seed),
        "packing": cfg["task"].get("packing", True),
        "prompt_style": cfg["model"]["prompt_style"],
        "dtype": cfg["model"]["dtype"],
    }


def _train(cfg, store: ArtifactStore, tracker: Tracker, base: BaseModel, *, kind: str, label: str,
           key_config: Mapping[str, Any], train: Sequence, val: Sequence) -> Variant:
    from mixmerge.train.sft import train_model

    seed = key_config["seed"]

    def build(work: Path) -> dict:
        return train_model(base.path, train=train, val=val, finetune=cfg["finetune"], trainer_cfg=cfg["trainer"],
                           model_cfg=cfg["model"], out_dir=work, seed=seed,
                           packing=cfg["task"].get("packing", True),
                           loggers=tracker.lightning_loggers(label), label=label)

    shown = label if seed == cfg["seed"] else f"{label} (seed {seed})"
    art = store.get_or_build(kind, key_config, build, inputs={"base": base.key}, resumable=True, label=shown)
    return Variant(label, art.path, art.key)


def ensure_specialist(cfg, store, tracker, base: BaseModel, task: str, splits, *,
                      train_seed: int | None = None) -> Variant:
    """``specialist/<task>``: ``base`` fine-tuned on one task's training split."""
    key_config = {"task": task, "data": splits.key, **training_config(cfg, train_seed)}
    return _train(cfg, store, tracker, base, kind="specialist", label=f"specialist/{task}",
                  key_config=key_config, train=splits.train, val=splits.valid)


def ensure_mixture(cfg, store, tracker, base: BaseModel, tasks: Mapping[str, Any], *,
                   train_seed: int | None = None) -> Variant:
    """``mixture``: ``base`` fine-tuned on the weighted mixture of every task (``task.mixture``)."""
    from mixmerge.data import build_mixture

    mix = cfg["task"]["mixture"]
    # null weights = every training example of every task
    weights = None if mix.get("weights") is None else {t: float(w) for t, w in mix["weights"].items() if t in tasks}
    train = build_mixture(tasks, weights, by=mix["by"], seed=cfg["seed"], tokenizer=load_tokenizer(base.path))
    val = [ex for splits in tasks.values() for ex in splits.valid]
    key_config = {"data": {t: s.key for t, s in sorted(tasks.items())}, "mixture": {"weights": weights, "by": mix["by"]},
                  **training_config(cfg, train_seed)}
    return _train(cfg, store, tracker, base, kind="mixture", label="mixture", key_config=key_config,
                  train=train, val=val)


def merge_config_for_key(merge_cfg: Mapping[str, Any]) -> dict:
    """The merge parameters that determine the merged weights (paths of a standalone merge excluded), and
    the version of the merge algorithm."""
    from mixmerge.merge.params import IO_KEYS
    from mixmerge.merge.registry import ALGORITHM_VERSION

    params = {k: v for k, v in merge_cfg.items() if k not in IO_KEYS}
    # Keys added after merges were cached, left out at their defaults so those caches stay valid.
    for key, default in (("output_format", "model"), ("adapter_rank", None)):
        if key in params and params[key] == default:
            del params[key]
    return {**params, "algorithm_version": ALGORITHM_VERSION}


def merge_inputs(base: BaseModel, specialists: Sequence[Variant]) -> dict[str, str]:
    """The keys a merge depends on besides its parameters: the base and every specialist."""
    return {"base": base.key, **{v.name: v.key for v in specialists}}


# Resident mergers, one per (base, specialists): Hydra runs the jobs of a multirun in one process (and joblib
# reuses its workers), so every trial after the first costs only the merge arithmetic.
_RESIDENT_MERGERS: dict[tuple[str, ...], Any] = {}


def ensure_fisher(cfg, store: ArtifactStore, specialist: Variant, splits) -> Variant:
    """The diagonal Fisher of ``specialist`` on its own task's training data (``merge/fisher.py``), cached by
    the specialist, the data and the number of batches: computed once, reused by every merge, sweep and
    round. ``merge.fisher_batches`` batches of ``finetune.batch_size`` examples, tokenized as in training."""
    from safetensors.torch import save_file

    from mixmerge.data.datamodule import collate_rows, forward_kwargs
    from mixmerge.data.tasks import cap
    from mixmerge.data.tokenize import tokenize_example
    from mixmerge.merge.fisher import compute_diagonal_fisher
    from mixmerge.merge.io import WEIGHTS_FILE

    n_batches = int(cfg["merge"].get("fisher_batches") or 32)
    batch_size, max_length = int(cfg["finetune"]["batch_size"]), int(cfg["finetune"]["max_length"])
    style = cfg["model"]["prompt_style"]
    key_config = {"data": splits.key, "batches": n_batches, "batch_size": batch_size, "max_length": max_length,
                  "prompt_style": style, "seed": cfg["seed"]}

    def build(work: Path) -> dict:
        model = load_model(specialist.path, dtype="float32")
        tokenizer = load_tokenizer(specialist.path)
        examples = cap(list(splits.train), n_batches * batch_size, seed=cfg["seed"])
        rows = [tokenize_example(ex, tokenizer, style, max_length) for ex in examples]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batches = (forward_kwargs(collate_rows(rows[i:i + batch_size], pad_id=pad))
                   for i in range(0, len(rows), batch_size))
        fisher = compute_diagonal_fisher(model, batches)
        save_file({n: t.contiguous() for n, t in fisher.items()}, str(work / WEIGHTS_FILE))
        return {"examples": len(rows), "batches": -(-len(rows) // batch_size)}

    art = store.get_or_build("fisher", key_config, build, inputs={"model": specialist.key},
                             label=f"Fisher of {specialist.name}")
    return Variant(f"fisher/{specialist.name}", art.path, art.key)


def _specialist_tasks(specialists: Sequence[Variant], task_data: Mapping[str, Any] | None, needs: str) -> list[str]:
    """The task each specialist was trained on, where its training data is known (the data-aware merges
    compute their statistics from it); otherwise the error that says what ``needs`` and what was given."""
    tasks = [v.name.removeprefix("specialist/") for v in specialists]
    if task_data is None or any(not v.name.startswith("specialist/") or t not in task_data
                                for v, t in zip(specialists, tasks, strict=True)):
        raise ValueError(f"{needs} or specialists of tasks with training data; got {[v.name for v in specialists]}")
    return tasks


def _with_fisher(cfg, store: ArtifactStore, specialists: Sequence[Variant],
                 task_data: Mapping[str, Any] | None) -> tuple[dict, dict[str, str]]:
    """``merge=fisher`` without ``merge.fisher_paths``: each specialist's cached Fisher fills them; the merge
    key then depends on the Fisher artifacts' keys, not on where the cache lies."""
    merge_cfg = dict(cfg["merge"])
    if merge_cfg.get("method") != "fisher" or merge_cfg.get("fisher_paths"):
        return merge_cfg, {}
    tasks = _specialist_tasks(specialists, task_data, "merge=fisher needs each merged model's Fisher: "
                              "merge.fisher_paths (one folder per model, mixmerge.merge.fisher)")
    fishers = [ensure_fisher(cfg, store, v, task_data[t]) for v, t in zip(specialists, tasks, strict=True)]
    merge_cfg["fisher_paths"] = [str(f.path) for f in fishers]
    return merge_cfg, {f.name: f.key for f in fishers}


def _gram_batches(cfg, specialist_path: Path | None, splits) -> tuple[list[dict], dict]:
    """``merge.gram_batches`` batches of ``finetune.batch_size`` examples of a task's training data, tokenized
    as in training (input_ids, attention_mask), and what they depend on (for the cache key)."""
    from mixmerge.data.datamodule import collate_rows
    from mixmerge.data.tasks import cap
    from mixmerge.data.tokenize import tokenize_example

    n_batches = int(cfg["merge"].get("gram_batches") or 32)
    batch_size, max_length = int(cfg["finetune"]["batch_size"]), int(cfg["finetune"]["max_length"])
    style = cfg["model"]["prompt_style"]
    key = {"data": splits.key, "batches": n_batches, "batch_size": batch_size, "max_length": max_length,
           "prompt_style": style, "seed": cfg["seed"]}
    if specialist_path is None:  # planning: the key only
        return [], key
    tokenizer = load_tokenizer(specialist_path)
    rows = [tokenize_example(ex, tokenizer, style, max_length)
            for ex in cap(list(splits.train), n_batches * batch_size, seed=cfg["seed"])]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = []
    for i in range(0, len(rows), batch_size):
        b = collate_rows(rows[i:i + batch_size], pad_id=pad)
        batches.append({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})
    return batches, key


def ensure_gram(cfg, store: ArtifactStore, specialist: Variant, splits) -> Variant:
    """RegMean's Gram matrices of ``specialist``'s linear-layer inputs on its own task's training data
    (``merge/gram.py``: block by block, one file per block), cached by the specialist, the data and the number
    of batches: computed once, reused by every merge, sweep and round."""
    from mixmerge.merge.gram import compute_grams

    _, key_config = _gram_batches(cfg, None, splits)

    def build(work: Path) -> dict:
        import time

        batches, _ = _gram_batches(cfg, specialist.path, splits)
        t0 = time.perf_counter()
        compute_grams(load_model(specialist.path, dtype="float32"), batches, work / "grams")
        return {"examples": sum(len(b["input_ids"]) for b in batches), "batches": len(batches),
                "gram_seconds": round(time.perf_counter() - t0, 3)}

    art = store.get_or_build("gram", key_config, build, inputs={"model": specialist.key},
                             label=f"Grams of {specialist.name}")
    return Variant(f"gram/{specialist.name}", art.path / "grams", art.key)


def ensure_regmean_plus_grams(cfg, store: ArtifactStore, base: BaseModel, specialists: Sequence[Variant],
                              splits: Sequence[Any]) -> list[Variant]:
    """RegMean++'s Grams (``merge/gram.py``, ``compute_regmean_plus_grams``): each specialist's layer inputs
    taken from the merged model's earlier layers, so they depend on the merge's alpha and weights too;
    cached by the specialists, their data, the batches and those settings."""
    from mixmerge.merge import resolve_params
    from mixmerge.merge.combine import merge_whole
    from mixmerge.merge.gram import compute_regmean_plus_grams
    from mixmerge.merge.io import SafetensorsFolder, open_source

    merge_cfg = cfg["merge"]
    keys = [_gram_batches(cfg, None, s)[1] for s in splits]
    key_config = {"data": keys, "alpha": merge_cfg.get("alpha"), "weight": merge_cfg.get("weight"),
                  "weights": merge_cfg.get("weights")}
    names = [f"model_{i}" for i in range(len(specialists))]

    def build(work: Path) -> dict:
        import time

        params = resolve_params({k: v for k, v in merge_cfg.items() if k != "gram_paths"}, len(specialists))
        data = [_gram_batches(cfg, v.path, s)[0] for v, s in zip(specialists, splits, strict=True)]
        work_model = load_model(base.path, dtype="float32")
        n_layers = int(work_model.config.num_hidden_layers)
        base_src = SafetensorsFolder(base.path)
        sources = [open_source(Path(v.path), base_src) for v in specialists]
        t0 = time.perf_counter()
        try:
            compute_regmean_plus_grams(
                work_model, sources, data,
                lambda n, ts, gs: merge_whole(n, None, ts, params.for_tensor(n, n_layers), grams=gs, n_layers=n_layers),
                [work / n for n in names])
        finally:
            for src in [base_src, *sources]:
                src.close()
        return {"batches": [len(d) for d in data], "gram_seconds": round(time.perf_counter() - t0, 3)}

    inputs = {"base": base.key, **{v.name: v.key for v in specialists}}
    art = store.get_or_build("gram_plus", key_config, build, inputs=inputs,
                             label=f"RegMean++ Grams of {', '.join(v.name for v in specialists)}")
    return [Variant(f"gram_plus/{v.name}", art.path / n, art.key) for v, n in zip(specialists, names, strict=True)]


def _with_grams(cfg, store: ArtifactStore, base: BaseModel, specialists: Sequence[Variant],
                task_data: Mapping[str, Any] | None) -> tuple[dict, dict[str, str]]:
    """``merge=regmean``/``regmean_plus`` without ``merge.gram_paths``: the cached Grams fill them; the merge
    key then depends on the Gram artifacts' keys, not on where the cache lies."""
    from mixmerge.merge.registry import get_method

    merge_cfg = dict(cfg["merge"])
    method = merge_cfg.get("method")
    if method is None or get_method(str(method)).kind != "regmean" or merge_cfg.get("gram_paths"):
        return merge_cfg, {}
    tasks = _specialist_tasks(specialists, task_data, f"merge={method} needs each merged model's Gram matrices: "
                              "merge.gram_paths (one folder per model, mixmerge.merge.gram)")
    if method == "regmean_plus":
        grams = ensure_regmean_plus_grams(cfg, store, base, specialists, [task_data[t] for t in tasks])
    else:
        grams = [ensure_gram(cfg, store, v, task_data[t]) for v, t in zip(specialists, tasks, strict=True)]
    merge_cfg["gram_paths"] = [str(g.path) for g in grams]
    return merge_cfg, {g.name: g.key for g in grams}


def ensure_merged(cfg, store: ArtifactStore, base: BaseModel, specialists: Sequence[Variant], *,
                  in_memory: bool = False, task_data: Mapping[str, Any] | None = None) -> Variant:
    """``merged``: the specialists merged by ``cfg["merge"]``.

    ``in_memory=False`` writes (and caches) a merged folder; ``in_memory=True`` returns a live model built
    on demand into the base (no folder; the specialists' task vectors stay resident across the trials of a
    sweep). Both carry the same key, so their evaluations are shared. ``task_data`` (task -> splits) lets
    ``merge=fisher`` compute each specialist's Fisher (``ensure_fisher``) when no ``fisher_paths`` are given.
    """
    merge_cfg, fisher_keys = _with_fisher(cfg, store, specialists, task_data)
    merge_cfg, details = _with_layerwise(cfg, merge_cfg, store, base, specialists)
    cfg = {**cfg, "merge": merge_cfg}
    merge_cfg, gram_keys = _with_grams(cfg, store, base, specialists, task_data)
    cfg = {**cfg, "merge": merge_cfg}
    key_config, inputs = merge_config_for_key(merge_cfg), merge_inputs(base, specialists)
    if fisher_keys:
        key_config.pop("fisher_paths")
        inputs.update(fisher_keys)
    if gram_keys:
        key_config.pop("gram_paths")
        inputs.update(gram_keys)
    if in_memory:
        variant = _merged_in_memory(cfg, base, specialists, content_key("merged", key_config, inputs))
        return replace(variant, details=details)
    from mixmerge.merge import merge_folders

    def build(work: Path) -> dict:
        report = merge_folders(merge_cfg, base.path, [v.path for v in specialists], work)
        return {"merge_seconds": report["time_s"]}

    art = store.get_or_build("merged", key_config, build, inputs=inputs, label=f"merged ({merge_cfg['method']})")
    return Variant("merged", art.path, art.key, details=details)


def ensure_delta_norms(store: ArtifactStore, base: BaseModel, specialists: Sequence[Variant]) -> dict:
    """Each specialist's delta L2 per (layer, module type), from the analysis (``analyze_models``, no pairs),
    cached by the base and the specialists: a layer-wise sweep measures them once, every trial reads them."""
    from mixmerge.analysis import analyze_models

    def build(work: Path) -> dict:
        result = analyze_models(base.path, {v.name: v.path for v in specialists}, pairs=[])
        write_json_atomic(work / "norms.json", {"models": result.models, "num_layers": result.num_layers,
                                                "norm_rows": result.norm_rows})
        return {}

    art = store.get_or_build("delta_norms", {"statistic": "l2 per layer and module type"}, build,
                             inputs=merge_inputs(base, specialists), label="delta norms of the specialists")
    return json.loads((art.path / "norms.json").read_text())


def _with_layerwise(cfg, merge_cfg: dict, store: ArtifactStore, base: BaseModel,
                    specialists: Sequence[Variant]) -> tuple[dict, dict | None]:
    """A layer-wise trial (``layerwise.point`` set, ``hparams_search=merge_optuna_layerwise``): the merge
    config with per-block weights and densities seeded from the specialists' delta-norm shares, and its
    record; otherwise the merge config unchanged."""
    layerwise = cfg.get("layerwise") or {}
    if layerwise.get("point") is None:
        return merge_cfg, None
    from mixmerge.merge.validate import read_config
    from mixmerge.sweep.layerwise import block_shares, layerwise_merge, validate_layerwise

    validate_layerwise(layerwise, merge_cfg, len(specialists))
    n_layers = int((read_config(base.path) or {}).get("num_hidden_layers") or 0)
    if n_layers < 1:
        raise ValueError(f"the base {base.path} has no num_hidden_layers in its config.json: a layer-wise merge "
                         "needs the number of layers")
    norms = ensure_delta_norms(store, base, specialists)
    shares = block_shares(norms["norm_rows"], [v.name for v in specialists], n_layers, int(layerwise["blocks"]))
    merged_cfg, record = layerwise_merge(merge_cfg, layerwise, shares, n_layers)
    log.info("layer-wise merge: codegen weights %s%s", record["weight"],
             f", densities {record['density']}" if "density" in record else "")
    return merged_cfg, {"layerwise": record}


def _merged_in_memory(cfg, base: BaseModel, specialists: Sequence[Variant], key: str) -> Variant:
    from mixmerge.merge import InMemoryMerger, resolve_params

    merge_cfg = cfg["merge"]
    params = resolve_params(merge_cfg, len(specialists))  # resolved once; every trial's merge takes it
    resident = (str(base.path), *(str(v.path) for v in specialists))

    def load():
        if resident not in _RESIDENT_MERGERS:
            _RESIDENT_MERGERS.clear()  # keep one set of task vectors in memory
            _RESIDENT_MERGERS[resident] = InMemoryMerger(base.path, [v.path for v in specialists])
        model = load_model(base.path, dtype=cfg["model"]["dtype"])
        report = _RESIDENT_MERGERS[resident].merge_into(model, params)
        log.info("merged %s in memory in %.2f s", merge_cfg["method"], report["time_s"])
        return model

    return Variant("merged", None, key, load=load, tokenizer=base.path)


def _autocast(model, dtype_name: str | None):
    """bf16 autocast on the model's device for ``dtype_name``; nothing for None."""
    import contextlib

    import torch

    if dtype_name is None:
        return contextlib.nullcontext()
    device = next(model.parameters()).device.type
    log.info("evaluation forward passes under %s autocast on %s", dtype_name, device)
    return torch.autocast(device_type=device, dtype=getattr(torch, dtype_name))


def ensure_evaluation(cfg, store, variant: Variant, heldout: Mapping[str, Sequence]):
    """Evaluate ``variant`` (cached by the model's key, the eval config and the held-out data): its metrics
    and the per-example observations behind them, as an ``eval.evidence.Measured``."""
    from mixmerge.eval import aggregate, evaluate_model
    from mixmerge.eval.evidence import Measured
    from mixmerge.eval.suite import eval_cache_config, load_samples

    eval_cfg = cfg["eval"]
    data_keys = {t: getattr(h, "key", None) for t, h in heldout.items()}
    autocast = evaluation_dtype(cfg)
    key_config = {"eval": eval_cache_config(eval_cfg), "prompt_style": cfg["model"]["prompt_style"],
                  "data": data_keys, **({"autocast": autocast} if autocast else {})}

    def build(work: Path) -> dict:
        model = variant.load() if variant.load else load_model(variant.path, dtype=cfg["model"]["dtype"])
        model.eval()
        tokenizer = load_tokenizer(variant.tokenizer or variant.path)
        with _autocast(model, autocast):
            metrics = evaluate_model(model, tokenizer, eval_cfg=eval_cfg,
                                     heldout={t: h.test for t, h in heldout.items()},
                                     prompt_style=cfg["model"]["prompt_style"], out_dir=work)
        if metrics:
            metrics["aggregate"] = aggregate(metrics, eval_cfg)
        write_json_atomic(work / "metrics.json", metrics)
        return {"model_path": str(variant.path) if variant.path else "in-memory merge"}

    art = store.get_or_build("eval", key_config, build, inputs={"model": variant.key},
                             label=f"evaluation of {variant.name}", refresh=not eval_cfg.get("cache", True))
    return Measured(json.loads((art.path / "metrics.json").read_text()), load_samples(art.path))
