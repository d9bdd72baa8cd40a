"""Stream task vectors out of safetensors folders and summarise them per layer and module type.

For every tensor of the base, each model's tensor is read in row chunks (through ``merge.io``'s
``SafetensorsFolder``, the one safetensors reader), so at most one chunk per model is in memory at a time: a 7B model's analysis needs a few hundred MB,
not the model. Deltas are taken in float64. Results are tidy rows at four levels of aggregation:
(layer, module), (layer, "all"), ("all", module) and ("all", "all").

Tied embeddings: a folder without ``lm_head.weight`` uses its input embedding as the head. If any
model has an explicit head, the head is analysed as its own tensor, against the base's head (or the
base's embedding when the base is tied), so untying during fine-tuning is measured, not dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mixmerge.analysis.layers import layer_sort_key, locate
from mixmerge.merge.deltas import NormAccumulator, PairAccumulator
from mixmerge.merge.io import SafetensorsFolder

log = logging.getLogger(__name__)

__all__ = ["ALL", "AnalysisResult", "analyze_models", "pair_name"]

ALL = "all"  # the layer/module value of aggregated rows
# Elements per streamed chunk: 4M float64 values = 32 MiB per model per chunk. Measured on SmolLM2-135M
# (2 models, 1 pair, 2 cores): 15.7 s CPU at 4M, 27.6 s at 1M, 34.5 s at 256K -- per-chunk overhead dominates
# below this; above it only the memory grows.
CHUNK_ELEMS = 4 * 1024 * 1024


def pair_name(a: str, b: str) -> str:
    return f"{a} ~ {b}"


@dataclass
class AnalysisResult:
    """Every number of one analysis, as tidy rows.

    ``norm_rows``: model, layer, module, l2 (of the delta), rms (l2/sqrt(numel)), base_l2, rel_l2
    (l2/base_l2), numel. ``pair_rows``: pair, model_a, model_b, layer, module, pearson, cosine,
    sign_conflict_rate, numel. ``layer``/``module`` are ``"all"`` on aggregated rows.
    """

    base: str
    models: list[str]
    pairs: list[tuple[str, str]]
    num_layers: int
    norm_rows: list[dict] = field(default_factory=list)
    pair_rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def block_layers(self) -> list[int]:
        return list(range(self.num_layers))

    def norm(self, model: str, layer: int | str = ALL, module: str = ALL, stat: str = "l2") -> float:
        for row in self.norm_rows:
            if row["model"] == model and row["layer"] == layer and row["module"] == module:
                return row[stat]
        raise KeyError(f"no norm row for model={model!r} layer={layer!r} module={module!r}")

    def pair_stat(self, pair: tuple[str, str] | str, layer: int | str = ALL, module: str = ALL,
                  stat: str = "pearson") -> float:
        name = pair if isinstance(pair, str) else pair_name(*pair)
        for row in self.pair_rows:
            if row["pair"] == name and row["layer"] == layer and row["module"] == module:
                return row[stat]
        raise KeyError(f"no pair row for pair={name!r} layer={layer!r} module={module!r}")


def _read(folder: SafetensorsFolder, name: str, rows: slice | None = None) -> torch.Tensor:
    """The tensor (or rows ``rows`` of its first dimension) as float64, read through the folder's
    zero-copy view: only the chunk's pages are touched (``folder.release`` drops them afterwards)."""
    t = folder.view(name)
    return (t if rows is None else t[rows]).to(torch.float64)


def _row_chunks(shape: tuple[int, ...]) -> Iterator[slice | None]:
    if len(shape) == 0:
        yield None
        return
    row_elems = math.prod(shape[1:]) or 1
    step = max(1, CHUNK_ELEMS // row_elems)
    for start in range(0, shape[0], step):
        yield slice(start, min(start + step, shape[0]))


def _head_and_embed(names: Sequence[str]) -> tuple[str | None, str | None]:
    head = next((n for n in names if locate(n).module == "head" and n.endswith("weight")), None)
    embed = next((n for n in names if locate(n).module == "embed" and n.endswith("weight")), None)
    return head, embed


def _source(name: str, available: set[str], head: str | None, embed: str | None, where: str) -> str:
    """The tensor that plays the role of ``name`` in a folder (a tied head reads the embedding)."""
    if name in available:
        return name
    if locate(name).module == "head" and embed is not None and embed in available:
        return embed
    raise ValueError(f"{where} has no tensor {name!r}; all models must share the base's architecture")


def _plan(base: SafetensorsFolder, folders: Mapping[str, SafetensorsFolder], notes: list[str]):
    """(analysed name, base source, {model: source}) for every tensor, plus the number of blocks."""
    base_names = base.names()
    base_set = set(base_names)
    base_head, base_embed = _head_and_embed(base_names)
    names = list(base_names)
    model_heads = {m: _head_and_embed(f.names()) for m, f in folders.items()}
    if base_head is None:
        explicit = [m for m, (h, _) in model_heads.items() if h is not None]
        if explicit:
            head_name = model_heads[explicit[0]][0]
            names.append(head_name)
            notes.append(f"base has a tied head; {', '.join(explicit)} untied it: head compared to base embedding")
    plan = []
    for name in names:
        base_src = _source(name, base_set, base_head, base_embed, f"base {base.path}")
        srcs = {}
        for m, f in folders.items():
            h, e = model_heads[m]
            srcs[m] = _source(name, set(f.names()), h, e, f"model {m!r} ({f.path})")
            if f.shape(srcs[m]) != base.shape(base_src):
                raise ValueError(
                    f"tensor {name!r}: model {m!r} has shape {f.shape(srcs[m])}, base has "
                    f"{base.shape(base_src)}; analysis needs models fine-tuned from the same base without resizing"
                )
        plan.append((name, base_src, srcs))
    for m, f in folders.items():
        extra = sorted(set(f.names()) - base_set - set(names))
        if extra:
            notes.append(f"model {m!r} has {len(extra)} tensors the base lacks, not analysed: {extra[:5]}")
            log.warning(notes[-1])
    layers = [loc.layer for loc in map(locate, names) if isinstance(loc.layer, int)]
    return plan, (max(layers) + 1 if layers else 0)


def _keys(layer: int | str, module: str) -> tuple[tuple, ...]:
    return ((layer, module), (layer, ALL), (ALL, module), (ALL, ALL))


def analyze_models(
    base: Path,
    models: Mapping[str, Path],
    pairs: Sequence[tuple[str, str]] | None = None,
) -> AnalysisResult:
    """Delta norms per model and task-vector similarity per pair, per layer and module type.

    ``models`` maps a display name to an HF folder fine-tuned (or merged) from ``base``. ``pairs``
    defaults to every unordered pair of ``models`` in the given order.
    """
    names = list(models)
    if not names:
        raise ValueError("analyze_models needs at least one model besides the base")
    pair_list = [tuple(p) for p in (pairs if pairs is not None else itertools.combinations(names, 2))]
    for a, b in pair_list:
        if a not in models or b not in models or a == b:
            raise ValueError(f"analysis pair ({a!r}, {b!r}) must name two different models of {names}")
    notes: list[str] = []
    norms: dict[str, dict[tuple, NormAccumulator]] = {m: defaultdict(NormAccumulator) for m in names}
    base_norms: dict[tuple, NormAccumulator] = defaultdict(NormAccumulator)
    sims: dict[tuple, dict[tuple, PairAccumulator]] = {p: defaultdict(PairAccumulator) for p in pair_list}

    with contextlib.ExitStack() as stack:
        base_f = stack.enter_context(SafetensorsFolder(base))
        folders = {m: stack.enter_context(SafetensorsFolder(p)) for m, p in models.items()}
        plan, num_layers = _plan(base_f, folders, notes)
        for name, base_src, srcs in plan:
            loc = locate(name)
            keys = _keys(loc.layer, loc.module)
            for rows in _row_chunks(base_f.shape(base_src)):
                b = _read(base_f, base_src, rows)
                chunk_base = NormAccumulator()
                chunk_base.update(b)
                for k in keys:
                    base_norms[k].merge(chunk_base)
                deltas = {m: _read(folders[m], srcs[m], rows) - b for m in names}
                del b
                for m in names:
                    acc = NormAccumulator()
                    acc.update(deltas[m])
                    for k in keys:
                        norms[m][k].merge(acc)
                for p in pair_list:
                    acc = PairAccumulator()
                    acc.update(deltas[p[0]], deltas[p[1]])
                    for k in keys:
                        sims[p][k].merge(acc)
            base_f.release(base_src)
            for m in names:
                folders[m].release(srcs[m])

    def order(key: tuple) -> tuple:
        layer, module = key
        return (layer == ALL, layer_sort_key(layer) if layer != ALL else (0, 0), module == ALL, module)

    result = AnalysisResult(str(base), names, [tuple(p) for p in pair_list], num_layers, notes=notes)
    for m in names:
        for key in sorted(norms[m], key=order):
            acc, base_acc = norms[m][key], base_norms[key]
            result.norm_rows.append({
                "model": m, "layer": key[0], "module": key[1], "l2": acc.l2, "rms": acc.rms,
                "base_l2": base_acc.l2, "rel_l2": acc.l2 / base_acc.l2 if base_acc.l2 > 0 else math.nan,
                "numel": acc.numel,
            })
    for p in pair_list:
        for key in sorted(sims[p], key=order):
            acc = sims[p][key]
            result.pair_rows.append({
                "pair": pair_name(*p), "model_a": p[0], "model_b": p[1], "layer": key[0], "module": key[1],
                "pearson": acc.pearson, "cosine": acc.cosine, "sign_conflict_rate": acc.sign_conflict_rate,
                "numel": acc.n,
            })
    return result
