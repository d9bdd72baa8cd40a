"""Merge a mergekit layout (``mergekit_layout.read_layout``): layer slices, passthrough stacking, an output
tokenizer and a chat template, as mergekit 0.1.5 plans them (mergekit/plan.py, mergekit/merge.py).

- Output layers are the slices' layers in order, renumbered from 0; layer ``k`` of a slice takes layer
  ``start + k`` of each of its sources and merges them with the slice's parameters, gradients evaluated at
  ``t = k / (n - 1)`` over the slice's ``n`` layers (``t = 1`` for a one-layer slice).
- Tensors outside the layer stack: the embeddings from the first slice's sources (with its parameters),
  the final norm and ``lm_head`` from the last slice's, both at ``t = 0``.
- ``config.json`` is the base's (else the first source's), with ``num_hidden_layers`` the output's layer
  count (and ``layer_types``, when present, cut to the stacked layers so the config stays loadable).
- The tokenizer: ``tokenizer_merge`` when a ``tokenizer_source`` is given, else the donor's files; a
  ``chat_template`` is written into its ``tokenizer_config.json`` (transformers' ``save_pretrained``).

Every tensor goes through the torch reference (``combine.merge_tensor``), one at a time; the result is
written to a temp folder renamed into place when complete.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mixmerge.files import publish_folder, temp_folder_beside, write_json_atomic
from mixmerge.merge import validate as V
from mixmerge.merge.chat_templates import CHAT_TEMPLATES
from mixmerge.merge.io import (
    FLOAT_DTYPES,
    REPORT,
    SafetensorsFolder,
    StreamingShardWriter,
    copy_side_files,
    is_adapter_folder,
    torch_dtype_of,
    torch_name,
)
from mixmerge.merge.mergekit_layout import resolve_layout
from mixmerge.merge.output import check_output, remove_stale_temporaries
from mixmerge.merge.params import MergeParams, parse_setting
from mixmerge.merge.tensor_names import split_layer
from mixmerge.merge.tokenizer_merge import (
    TokenRow,
    align_vocab_rows,
    build_output_vocabulary,
    is_vocab_tensor,
)

LAYER_FREE_KEYS = ("num_hidden_layers", "vocab_size", "layer_types")  # may differ between the stacked models


def merge_layout(layout: Mapping[str, Any], out: Path, *, overwrite: bool = False) -> dict:
    """Merge ``layout`` into ``out`` and return the merge report (``merge_report.json``)."""
    t0 = time.perf_counter()
    slice_params = resolve_layout(layout)
    models = list(dict.fromkeys(src["model"] for s in layout["slices"] for src in s["sources"]))
    tok_src = layout.get("tokenizer_source")
    extra = [("tokenizer_source", Path(tok_src["model"]))] if isinstance(tok_src, Mapping) else []
    base = layout.get("base")
    named = [(f"model {m}", Path(m)) for m in models] + extra
    if base is not None and base not in models:  # the donor of config and tokenizer (linear slices)
        named.append(("base_model", Path(base)))
    check_output(Path(out), named, overwrite=overwrite)
    configs = {}
    for label, p in named:
        if not p.is_dir() or is_adapter_folder(p) or V.read_config(p) is None:
            raise FileNotFoundError(f"{label}: {str(p)!r} is not an HF model folder with config.json (LoRA "
                                    f"adapters are not supported with slices)")
        configs[str(p)] = V.read_config(p)
    _check_same_architecture(models, configs, vocab_free=tok_src is not None)
    slices = _with_ranges(layout["slices"], configs)
    donor = base or slices[0]["sources"][0]["model"]
    if tok_src is None:  # one vocabulary: the same tokenizer everywhere (as the folder merge checks)
        V.check_tokenizers(Path(donor), [Path(m) for m in models], "strict")
    remove_stale_temporaries(Path(out))

    vocab = build_output_vocabulary(tok_src, Path(donor), [Path(m) for m in models], layout.get("tokens"),
                                    layout.get("pad_to_multiple_of")) if tok_src else None
    folders = {m: SafetensorsFolder(m) for m in models}
    out = Path(out)
    tmp = temp_folder_beside(out)
    try:
        plan = _plan(slices, slice_params, folders, vocab)
        out_dtype = _output_dtype(layout, configs[donor])
        entries = [(p["name"], p["shape"], out_dtype if p["float"] else p["dtype"]) for p in plan]
        writer = StreamingShardWriter(tmp, entries, int(2000 * 1e6))
        for item, (name, _, dtype) in zip(plan, entries, strict=True):
            writer.write(name, _merge_one(item, folders, vocab).to(torch_dtype_of(dtype)))
        writer.close()
        copy_side_files(Path(donor), tmp)
        _write_tokenizer(tmp, vocab, layout.get("chat_template"), Path(donor), models)
        n_layers = sum(s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0] for s in slices)
        _fix_config(tmp, configs[donor], out_dtype, n_layers, slices, configs, vocab)
        report = {"method": layout["method"], "layout": {**layout, "slices": slices}, "models": models,
                  "output": str(out), "output_files": writer.files, "n_tensors": len(plan),
                  "n_layers": n_layers, "vocab_size": None if vocab is None else vocab.size,
                  "time_s": round(time.perf_counter() - t0, 3)}
        write_json_atomic(tmp / REPORT, report)
        publish_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for f in folders.values():
            f.close()
    return report


def _check_same_architecture(models, configs, *, vocab_free: bool) -> None:
    ref = configs[models[0]]
    for m in models[1:]:
        for key in V.ARCH_KEYS:
            if key in LAYER_FREE_KEYS and (key != "vocab_size" or vocab_free):
                continue
            if ref.get(key) != configs[m].get(key):
                hint = " (a tokenizer_source re-indexes different vocabularies)" if key == "vocab_size" else ""
                raise ValueError(f"different architectures: {m} has {key}={configs[m].get(key)!r} but {models[0]} "
                                 f"has {ref.get(key)!r}; slices stack layers of one architecture{hint}")


def _with_ranges(slices, configs) -> list[dict[str, Any]]:
    """The slices with every ``layer_range`` filled in (``models:``: the whole stack) and checked."""
    out = []
    for i, s in enumerate(slices):
        sources = []
        for src in s["sources"]:
            n = int(configs[src["model"]].get("num_hidden_layers") or 0)
            start, end = src["layer_range"] or [0, n]
            if end > n:
                raise ValueError(f"slices[{i}]: layer_range [{start}, {end}] of {src['model']} goes past its "
                                 f"{n} layers")
            sources.append({"model": src["model"], "layer_range": [start, end]})
        if len({e - a for a, e in (x["layer_range"] for x in sources)}) > 1:
            raise ValueError(f"slices[{i}]: its sources have different numbers of layers "
                             f"{[x['layer_range'] for x in sources]}")
        out.append({**s, "sources": sources})
    return out


def _layer_names(folder: SafetensorsFolder, layer: int) -> list[str]:
    """The names after ``layers.<layer>.`` in ``folder``, in file order."""
    return [found[1] for n in folder.names() if (found := split_layer(n)) is not None and found[0] == layer]


def _with_layer(name: str, layer: int) -> str:
    """``name`` (a block tensor) moved to block ``layer``."""
    idx, suffix = split_layer(name)
    return name[: len(name) - len(suffix) - len(str(idx)) - 1] + f"{layer}." + suffix


def _plan(slices, slice_params, folders, vocab) -> list[dict[str, Any]]:
    """Every output tensor: its name, shape, dtype, and the (model, input name) pairs it merges."""
    first, last = slices[0], slices[-1]
    ref = folders[first["sources"][0]["model"]]
    outside = [n for n in ref.names() if split_layer(n) is None]
    pre = [n for n in outside if "embed" in n or "wte" in n or "wpe" in n]
    post = [n for n in outside if n not in pre]
    layer_prefix = next((n for n in ref.names() if split_layer(n) is not None), None)
    plan = []

    def add(out_name, s_idx, inputs, pos, n):
        models = [m for m, _ in inputs]
        present = [m for m, name in inputs if name in folders[m]]
        if not present:
            return  # an optional tensor no input has (lm_head with tied embeddings)
        if len(present) != len(inputs):
            missing = next(m for m, name in inputs if name not in folders[m])
            raise ValueError(f"missing tensor: {missing} has no {dict(inputs)[missing]!r} that {present[0]} has")
        src, name0 = inputs[0]
        shape = tuple(folders[src].shape(name0))
        if vocab is not None and is_vocab_tensor(out_name):
            shape = (vocab.size, *shape[1:])
        else:
            for m, name in inputs:
                if tuple(folders[m].shape(name)) != shape:
                    raise ValueError(f"shape mismatch: {name!r} is {folders[m].shape(name)} in {m} but {shape} "
                                     f"in {src}")
        dtype = folders[src].dtype_str(name0)
        plan.append({"name": out_name, "slice": slices[s_idx], "params": slice_params[s_idx], "inputs": inputs,
                     "models": models, "pos": pos, "n": n, "shape": shape, "dtype": dtype,
                     "float": dtype in FLOAT_DTYPES})

    for name in pre:
        add(name, 0, [(src["model"], name) for src in first["sources"]], None, 1)
    out_layer = 0
    for s_idx, s in enumerate(slices):
        start0, end0 = s["sources"][0]["layer_range"]
        for k in range(end0 - start0):
            for suffix in _layer_names(ref, 0) if layer_prefix else []:
                template = _with_layer(next(n for n in ref.names() if (f := split_layer(n)) and f[1] == suffix), 0)
                inputs = [(src["model"], _with_layer(template, src["layer_range"][0] + k)) for src in s["sources"]]
                add(_with_layer(template, out_layer), s_idx, inputs, k, end0 - start0)
            out_layer += 1
    for name in post:
        add(name, len(slices) - 1, [(src["model"], name) for src in last["sources"]], None, 1)
    return plan


def _merge_one(item, folders, vocab) -> torch.Tensor:
    """One output tensor: its inputs read (re-indexed to the output vocabulary when asked), then merged."""
    tensors = {m: folders[m].get(name) for m, name in item["inputs"]}
    params: MergeParams | None = item["params"]
    base = (item["slice"]["merge"] or {}).get("base")
    if vocab is not None and is_vocab_tensor(item["name"]):
        order = list(tensors)
        aligned = align_vocab_rows([tensors[m] for m in order], [vocab.permutations[m] for m in order],
                                   order.index(base) if base in order else None,
                                   _token_rows(vocab, order, item["name"]), vocab.size)
        tensors = dict(zip(order, aligned, strict=True))
    if not next(iter(tensors.values())).is_floating_point():
        return next(iter(tensors.values()))
    # The position in the slice, as a block name: the layer gradients (for_tensor) and SLERP's t read
    # t = k / (n - 1) from it; tensors outside the stack keep their name (t = 0).
    name = item["name"] if item["pos"] is None else _with_layer(item["name"], item["pos"])
    if params is None:  # passthrough: the one source, times its scale
        (x,) = tensors.values()
        scale = item["slice"]["scale"]
        value = _scale_at(scale, name, item["n"]) if scale is not None else None
        return x.float() if value is None else x.float() * value
    from mixmerge.merge.combine import merge_tensor

    cfg = item["slice"]["merge"]
    tensor_params = params.for_tensor(name, item["n"])
    base_t = tensors[cfg["base"]].float() if cfg.get("base") in tensors and params.method.kind != "linear" else None
    inputs = [tensors[m].float() for m in cfg["models"]]
    merged, _ = merge_tensor(name, base_t, inputs, tensor_params, n_layers=item["n"], with_stats=False)
    return merged


def _token_rows(vocab, order: list[str], tensor: str) -> dict[int, TokenRow]:
    """``tokenizer.tokens`` as ``TokenRow``s over this tensor's inputs ``order`` (mergekit/tokenizer/embed.py)."""
    rows = {}
    for token, spec in vocab.tokens.items():
        src = spec["source"]
        if src["kind"] == "zero":
            rows[vocab.vocab[token]] = TokenRow(None, force=spec["force"])
            continue
        if src["model"] not in order:
            raise ValueError(f"tokenizer.tokens[{token!r}] takes its row from {src['model']}, which is not an input "
                             f"of {tensor!r} (its inputs: {order})")
        row = None
        if src["kind"] == "model_token":
            row = src["token_id"]
            if row is None:
                own = vocab.original_vocabs.get(src["model"], {})
                if src["token"] not in own:
                    raise ValueError(f"tokenizer.tokens[{token!r}]: token {src['token']!r} is not in {src['model']}")
                row = own[src["token"]]
        rows[vocab.vocab[token]] = TokenRow(order.index(src["model"]), row, spec["force"])
    return rows


def _scale_at(setting, name: str, n: int) -> float | None:
    sched = parse_setting(setting, "passthrough parameters.scale")
    try:
        return sched.at(name, n)
    except ValueError:  # no rule matches this tensor: no scale (mergekit's default None)
        return None


def _output_dtype(layout, donor_cfg) -> str:
    from mixmerge.dtypes import SAFETENSORS_NAMES

    requested = layout.get("out_dtype") or layout.get("dtype")
    if requested is not None:
        return SAFETENSORS_NAMES[requested]
    name = donor_cfg.get("dtype") or donor_cfg.get("torch_dtype") or "float32"
    return SAFETENSORS_NAMES.get(name, "F32")


def _fix_config(tmp: Path, donor_cfg, out_dtype: str, n_layers: int, slices, configs, vocab) -> None:
    cfg = dict(donor_cfg)
    for k in [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]:
        cfg[k] = torch_name(out_dtype)
    cfg["num_hidden_layers"] = n_layers
    if isinstance(cfg.get("layer_types"), list):
        cfg["layer_types"] = [configs[s["sources"][0]["model"]]["layer_types"][i] for s in slices
                              for i in range(*s["sources"][0]["layer_range"])]
    if vocab is not None:
        cfg["vocab_size"] = vocab.size
    write_json_atomic(tmp / "config.json", cfg)


def pick_chat_template(value: str, models) -> str | None:
    """``auto``: the template most models carry (None when none has one); a name: ours; else the Jinja."""
    if value == "auto":
        from mixmerge.merge.tokenizer_merge import load_tokenizer

        found = []
        for m in models:
            t = load_tokenizer(Path(m)).chat_template
            t = t.get("default") if isinstance(t, dict) else t
            if t:
                found.append(t.strip())
        return Counter(found).most_common(1)[0][0] if found else None
    return CHAT_TEMPLATES.get(value, value)


def _write_tokenizer(tmp: Path, vocab, chat_template: str | None, donor: Path, models) -> None:
    """The output tokenizer (``vocab``'s) or the donor's re-saved with the chat template; else the copied
    donor files stay as they are."""
    if vocab is None and chat_template is None:
        return
    from mixmerge.merge.tokenizer_merge import load_tokenizer

    tok = vocab.tokenizer if vocab is not None else load_tokenizer(donor)
    if chat_template is not None:
        template = pick_chat_template(chat_template, [donor, *models])
        if template is not None:
            tok.chat_template = template
    tok.save_pretrained(str(tmp))
    cfg = tmp / "tokenizer_config.json"
    if chat_template is not None and cfg.is_file() and tok.chat_template is not None:
        data = json.loads(cfg.read_text())
        if data.get("chat_template") != tok.chat_template:  # transformers 5 writes chat_template.jinja instead
            data["chat_template"] = tok.chat_template
            write_json_atomic(cfg, data)
