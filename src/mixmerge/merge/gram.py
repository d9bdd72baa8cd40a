"""Gram matrices of the linear layers' inputs, for RegMean and RegMean++ (``merge/regmean.py``).

The model runs one decoder block at a time: the inputs of block 0 are captured once, then each block is
run on them with forward hooks on its ``nn.Linear`` modules, its Grams are written to
``layer_<l>.safetensors`` (one file per block, named like the weights: ``model.layers.3.mlp.down_proj.weight``
-> its (in, in) Gram) and dropped, and its outputs become the next block's inputs. Peak memory is therefore
one block's Grams (accumulated in float64, written in float32) plus the hidden states of the data
(examples x tokens x hidden x 4 bytes), whatever the depth. A Gram is the mean over non-padding tokens of
x xᵀ. Padding tokens are left out; tied or out-of-block linears (the LM head) have no Gram and are
averaged.

- RegMean (Jin et al. 2023): ``compute_grams`` runs the specialist's own blocks on its own task data.
- RegMean++ (https://arxiv.org/abs/2508.03121): ``compute_regmean_plus_grams`` merges block by block; each
  specialist's block l sees the hidden states that the MERGED blocks 0..l-1 (and merged embeddings) produce
  from that specialist's data. Cost: per block, one forward of every specialist's block on its data (the
  Grams) plus one forward of the merged block on every specialist's data (the next inputs) = about two
  full forward passes per specialist, plus one RegMean solve per linear weight; the Grams depend on the
  merge's own alpha and weights, so they are cached per merge setting, not per specialist.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import save_file

from mixmerge.files import publish_folder, temp_folder_beside


class TensorSource(Protocol):
    def get(self, name: str) -> torch.Tensor: ...
    def __contains__(self, name: str) -> bool: ...


def layer_file(layer: int) -> str:
    return f"layer_{layer:04d}.safetensors"


@dataclass
class BlockInputs:
    """What a decoder block is called with, batch by batch: hidden states, the other arguments (masks,
    rotary embeddings) and which tokens count (not padding)."""

    hidden: list[torch.Tensor]
    kwargs: list[dict]
    tokens: list[torch.Tensor]  # (batch, seq) bool


class _StopForward(Exception):
    pass


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The block stack of an HF decoder (``model.model.layers``: Llama, Qwen2, Mistral, ...), or a clear error."""
    blocks = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"RegMean's Gram statistics need an HF decoder with model.model.layers; "
                         f"{type(model).__name__} has none")
    kinds = {getattr(b, "attention_type", None) for b in blocks}
    if len(kinds) > 1:  # e.g. alternating sliding-window layers: each block would need its own mask
        raise ValueError(f"RegMean's layer-by-layer Grams need one attention type for every block; "
                         f"{type(model).__name__} mixes {sorted(map(str, kinds))}")
    return blocks


def block_prefix(model: torch.nn.Module, layer: int) -> str:
    """The state-dict prefix of block ``layer`` (``model.layers.<l>.``)."""
    block = decoder_blocks(model)[layer]
    for name, module in model.named_modules():
        if module is block:
            return f"{name}."
    raise ValueError(f"block {layer} is not a submodule of the model")


@torch.no_grad()
def capture_block_inputs(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> BlockInputs:
    """The inputs of block 0 for every batch (embeddings, masks, position embeddings), without running
    the blocks. Each batch holds ``input_ids`` and ``attention_mask`` (labels are ignored)."""
    first = decoder_blocks(model)[0]
    captured: dict = {}

    def catch(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    out = BlockInputs([], [], [])
    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask = batch.get("attention_mask")
            ids = batch["input_ids"]
            with contextlib.suppress(_StopForward):  # the blocks are not run
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            out.hidden.append(captured.pop("hidden").detach())
            out.kwargs.append(captured.pop("kwargs"))
            out.tokens.append(torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool())
    finally:
        handle.remove()
        model.train(was_training)
    if not out.hidden:
        raise ValueError("the Gram statistics got no batches; pass the specialist's task data")
    return out


@torch.no_grad()
def block_grams(block: torch.nn.Module, inputs: BlockInputs, prefix: str) -> dict[str, torch.Tensor]:
    """Run ``block`` on ``inputs``; return each of its linear layers' input Gram (mean over the counted
    tokens of x xᵀ), keyed by the weight's full name (``prefix`` + module + ``.weight``), float32.

    Linears that share one input (q/k/v, gate/up) compute and accumulate its x xᵀ once: the others are
    aliases of the first, so a block holds one float64 sum per distinct input."""
    sums: dict[str, torch.Tensor] = {}  # owner name -> sum over batches of x xᵀ (float64)
    counts: dict[str, int] = {}
    alias: dict[str, str] = {}  # a linear fed the same tensor as an earlier one -> that one (its owner)
    # this batch: (input tensor, the linear that accumulated it); held, so no later tensor can reuse its memory
    # and pass for it (identity, not the address, says "same input")
    owners: list[tuple[torch.Tensor, str]] = []
    current: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module, args, output):
            x = args[0]
            owner = next((o for t, o in owners if t is x), None)
            if owner is not None:
                alias.setdefault(name, owner)
                return
            owners.append((x, name))
            rows = x[current["tokens"]].double()  # (counted tokens, in)
            xtx = rows.T @ rows
            if name in sums:
                sums[name].add_(xtx)
            else:
                sums[name] = xtx
            counts[name] = counts.get(name, 0) + rows.shape[0]
        return hook

    handles = [m.register_forward_hook(hook_for(f"{prefix}{n}.weight"))
               for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    try:
        for hidden, kwargs, tokens in zip(inputs.hidden, inputs.kwargs, inputs.tokens, strict=True):
            current["tokens"] = tokens
            block(hidden, **kwargs)
            owners.clear()
    finally:
        for h in handles:
            h.remove()
    if not sums:
        raise ValueError(f"block {prefix!r} has no nn.Linear layers to take Grams of")
    means = {n: (s / max(counts[n], 1)).float() for n, s in sums.items()}
    sums.clear()
    return {**means, **{n: means[o] for n, o in alias.items()}}


@torch.no_grad()
def run_block(block: torch.nn.Module, inputs: BlockInputs) -> BlockInputs:
    """The block's outputs: the next block's inputs (same masks and position embeddings)."""
    hidden = []
    for h, kwargs in zip(inputs.hidden, inputs.kwargs, strict=True):
        out = block(h, **kwargs)
        hidden.append((out[0] if isinstance(out, tuple) else out).detach())
    return BlockInputs(hidden, inputs.kwargs, inputs.tokens)


def _save_layer(grams: Mapping[str, torch.Tensor], folder: Path, layer: int) -> None:
    """One block's Grams as one file; linears that share an input get their own copy (safetensors refuses
    shared storage)."""
    seen: set[int] = set()
    tensors = {}
    for n, g in grams.items():
        tensors[n] = g.clone() if id(g) in seen else g.contiguous()
        seen.add(id(g))
    save_file(tensors, str(folder / layer_file(layer)))


@torch.no_grad()
def compute_grams(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], out: str | os.PathLike,
                  *, on_layer: Callable[[int], None] | None = None) -> Path:
    """RegMean's Grams of ``model`` (a specialist) on ``batches`` (its own task data), one file per block
    written as soon as the block is done, the folder published atomically at ``out``. ``on_layer(l)`` is
    called after block l's file is written (tests use it to watch memory)."""
    was_training = model.training
    model.eval()
    tmp = temp_folder_beside(Path(out))
    try:
        inputs = capture_block_inputs(model, batches)
        for layer, block in enumerate(decoder_blocks(model)):
            _save_layer(block_grams(block, inputs, block_prefix(model, layer)), tmp, layer)
            if on_layer is not None:
                on_layer(layer)
            inputs = run_block(block, inputs)
        publish_folder(tmp, Path(out))
    finally:
        model.train(was_training)
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once published
    return Path(out)


def _load_block(block: torch.nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
    """Copy ``tensors`` (full names under ``prefix``) into ``block``; every block parameter must be given."""
    state = block.state_dict(keep_vars=True)
    for local, target in state.items():
        name = prefix + local
        if name not in tensors:
            raise ValueError(f"missing tensor {name!r} for block {prefix!r}")
        target.data.copy_(tensors[name].to(dtype=target.dtype))


@torch.no_grad()
def compute_regmean_plus_grams(
    model: torch.nn.Module,
    specialists: Sequence[TensorSource],
    batches: Sequence[Iterable[Mapping[str, torch.Tensor]]],
    merge_tensor: Callable[[str, list[torch.Tensor], list[torch.Tensor] | None], torch.Tensor],
    outs: Sequence[str | os.PathLike],
    *,
    on_layer: Callable[[int], None] | None = None,
) -> list[Path]:
    """RegMean++'s Grams: model i's into ``outs[i]`` (one file per block, each folder published atomically).

    ``model`` is a working copy of the architecture (e.g. the base); its weights are overwritten.
    ``specialists[i]`` reads specialist i's tensors (``.get(name)``, ``name in``; e.g. a SafetensorsFolder;
    a tied head absent from the files follows its embedding); ``batches[i]`` is its task data;
    ``merge_tensor(name, tensors, grams_or_None)`` is the merge of one tensor (RegMean's closed form or
    the average). Embeddings (everything before block 0) are merged first; then, for each block, every
    specialist's own block gives its Grams on the merged model's hidden states of its data, the block is
    merged, and the merged block produces the next hidden states."""
    if len(specialists) != len(batches) or len(batches) != len(outs):
        raise ValueError("compute_regmean_plus_grams needs one tensor reader, one data set and one output per model")
    blocks = decoder_blocks(model)
    prefixes = [block_prefix(model, i) for i in range(len(blocks))]
    state = model.state_dict(keep_vars=True)
    outside = [n for n in state if not any(n.startswith(p) for p in prefixes) and n in specialists[0]]
    for name in outside:  # embeddings (and, unused here, the final norm and head): the merged model's
        state[name].data.copy_(merge_tensor(name, [s.get(name) for s in specialists], None))
    was_training = model.training
    model.eval()
    tmps = [temp_folder_beside(Path(o)) for o in outs]
    try:
        inputs = [capture_block_inputs(model, b) for b in batches]
        for layer, (block, prefix) in enumerate(zip(blocks, prefixes, strict=True)):
            names = [prefix + local for local in block.state_dict()]
            own = [{n: s.get(n) for n in names} for s in specialists]
            grams = []
            for i, tensors in enumerate(own):
                _load_block(block, tensors, prefix)
                grams.append(block_grams(block, inputs[i], prefix))
                _save_layer(grams[i], tmps[i], layer)
            merged = {n: merge_tensor(n, [t[n] for t in own], [g[n] for g in grams] if n in grams[0] else None)
                      for n in names}
            _load_block(block, merged, prefix)
            del own, grams, merged
            if on_layer is not None:
                on_layer(layer)
            if layer < len(blocks) - 1:
                inputs = [run_block(block, x) for x in inputs]
        for tmp, out in zip(tmps, outs, strict=True):
            publish_folder(tmp, Path(out))
    finally:
        model.train(was_training)
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already once published
    return [Path(o) for o in outs]
