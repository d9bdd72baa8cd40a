"""Read the layout keys of a mergekit YAML: ``slices``, ``tokenizer_source``/``tokenizer`` and ``chat_template``.

The result is a plain ``layout`` dict (JSON-able, so the merge report can hold it) that ``merge/slices.py``
runs; it follows mergekit 0.1.5 (mergekit/config.py, mergekit/plan.py):

- ``models:`` is one output slice holding every model's whole layer stack (mergekit adds ``base_model`` to
  it when missing); ``slices:`` lists output slices, each ``sources: [{model, layer_range: [a, b],
  parameters}]`` with the same number of layers per source, an optional ``base_model`` and ``parameters``.
- Each slice is merged with ``merge_method``; its parameters are read source first, then the slice's, then
  the top level's. The base of a method that needs one must be among the slice's sources (mergekit adds no
  base to explicit slices and refuses the merge otherwise).
- ``passthrough`` takes exactly one source per slice, times its optional ``scale``.

Everything is checked here, before any file is read, with an error that names the key. The reader of the
``models`` part (``mergekit_yaml``) calls ``read_layout`` and passes itself in as ``Reader`` (imports flow
down: this module does not import it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mixmerge.dtypes import DTYPE_NAMES
from mixmerge.merge.chat_templates import CHAT_TEMPLATES
from mixmerge.merge.params import MergeParams, check_known_keys, resolve_params
from mixmerge.merge.registry import METHODS

LAYOUT_KEYS = ("slices", "tokenizer_source", "tokenizer", "chat_template")  # the keys read here
SLICE_KEYS = ("sources", "base_model", "residual_weight", "parameters")
SOURCE_KEYS = ("model", "layer_range", "parameters")
TOKENIZER_KEYS = ("source", "tokens", "pad_to_multiple_of")
PASSTHROUGH = "passthrough"
CHAT_TEMPLATE_NAMES = tuple(CHAT_TEMPLATES)  # mergekit 0.1.5's names


@dataclass(frozen=True)
class Reader:
    """What ``mergekit_yaml`` lends: ``models_cfg(doc, where, scopes, in_slice=...)`` (one slice's merge
    config) and ``chain(settings, where)`` (settings highest first as one setting, or None)."""

    models_cfg: Callable[..., dict[str, Any]]
    chain: Callable[[Sequence[Any], str], Any]


def read_layout(doc: Mapping[str, Any], source: str, reader: Reader) -> dict[str, Any]:
    """The merge config of a mergekit YAML with slices, a tokenizer source or a chat template."""
    method = doc.get("merge_method")
    if not method:
        raise ValueError(f"{source}: no merge_method")
    if method != PASSTHROUGH and method not in METHODS:
        known = ", ".join(sorted([*METHODS, PASSTHROUGH]))
        raise ValueError(f"{source}: merge_method={method!r} is not supported with slices or a tokenizer "
                         f"source; use one of: {known}")
    base = doc.get("base_model")
    if base is not None and "+" in str(base):
        raise ValueError(f"{source}: base_model={base!r} applies a LoRA to the base; merge that LoRA into the "
                         f"base first")
    base = None if base is None else str(base)
    has_models, has_slices = bool(doc.get("models")), bool(doc.get("slices"))
    if has_models == has_slices:
        raise ValueError(f"{source}: give exactly one of 'models' and 'slices' (mergekit requires it)")
    top = doc.get("parameters") or {}
    if has_slices:
        slices = [_read_slice(s, i, method, base, top, doc, source, reader) for i, s in enumerate(doc["slices"])]
    else:
        slices = [_models_slice(method, base, top, doc, source, reader)]
    layout = {"method": method, "base": base, "slices": slices,
              "tokenizer_source": _tokenizer_source(doc, source),
              "tokens": _tokens((doc.get("tokenizer") or {}).get("tokens"), source),
              "pad_to_multiple_of": _pad_to((doc.get("tokenizer") or {}).get("pad_to_multiple_of"), source),
              "chat_template": _chat_template(doc.get("chat_template"), source)}
    models = list(dict.fromkeys(src["model"] for s in slices for src in s["sources"]))
    cfg: dict[str, Any] = {"method": method, "base": base, "models": models, "layout": layout}
    for key in ("dtype", "out_dtype"):
        if doc.get(key) is not None and doc[key] not in DTYPE_NAMES:
            raise ValueError(f"{source}: {key}={doc[key]!r} is not one of {DTYPE_NAMES}")
        layout[key] = doc.get(key)
    return cfg


def _model_path(model: Any, where: str) -> str:
    model = str(model)
    if "+" in model:
        raise ValueError(f"{where}={model!r}: a LoRA applied to a model is not supported with slices or a "
                         f"tokenizer source; merge the adapter into its model first")
    return model


def _layer_range(value: Any, where: str) -> list[int]:
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{where}={value!r}: a layer range is two integers [start, end) (e.g. [0, 16])")
    start, end = value
    if not 0 <= start <= end:
        raise ValueError(f"{where}={list(value)!r}: need 0 <= start <= end")
    return [start, end]


def _read_slice(spec: Any, i: int, method: str, base: str | None, top: Mapping[str, Any],
                doc: Mapping[str, Any], source: str, reader: Reader) -> dict[str, Any]:
    where = f"{source}: slices[{i}]"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}={spec!r}: a slice is {{sources: [{{model, layer_range}}, ...]}}")
    check_known_keys(spec, SLICE_KEYS, f"{where}.")
    entries = spec.get("sources") or []
    if not entries:
        raise ValueError(f"{where}.sources is empty; list the models and layer ranges this slice takes")
    sources = []
    for j, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "model" not in entry or "layer_range" not in entry:
            raise ValueError(f"{where}.sources[{j}]={entry!r}: a source is {{model: PATH, layer_range: [a, b]}}")
        check_known_keys(entry, SOURCE_KEYS, f"{where}.sources[{j}].")
        sources.append({"model": _model_path(entry["model"], f"{where}.sources[{j}].model"),
                        "layer_range": _layer_range(entry["layer_range"], f"{where}.sources[{j}].layer_range"),
                        "parameters": entry.get("parameters") or {}})
    lengths = {s["layer_range"][1] - s["layer_range"][0] for s in sources}
    if len(lengths) > 1:
        raise ValueError(f"{where}: its sources have different numbers of layers "
                         f"{[s['layer_range'] for s in sources]}; every source of a slice needs as many layers")
    models = [s["model"] for s in sources]
    if len(set(models)) != len(models):
        raise ValueError(f"{where}: model {models[0]!r} is listed twice among the sources; list each model once "
                         f"per slice")
    slice_base = str(spec["base_model"]) if spec.get("base_model") is not None else base
    return _slice(method, slice_base, sources, [spec.get("parameters") or {}, top], doc, where, reader)


def _models_slice(method: str, base: str | None, top: Mapping[str, Any], doc: Mapping[str, Any],
                  source: str, reader: Reader) -> dict[str, Any]:
    """``models:`` as mergekit plans it: one slice of every model's whole stack (``layer_range: None``)."""
    sources = []
    for i, entry in enumerate(doc["models"]):
        if not isinstance(entry, Mapping) or "model" not in entry:
            raise ValueError(f"{source}: models[{i}]={entry!r}: a model is {{model: PATH, parameters: ...}}")
        check_known_keys(entry, ("model", "parameters"), f"{source}: models[{i}].")
        sources.append({"model": _model_path(entry["model"], f"{source}: models[{i}].model"), "layer_range": None,
                        "parameters": entry.get("parameters") or {}})
    if base is not None and base not in [s["model"] for s in sources]:
        sources.append({"model": base, "layer_range": None, "parameters": {}})  # mergekit/plan.py adds it
    return _slice(method, base, sources, [top], doc, source, reader, in_slice=False)


def _slice(method: str, base: str | None, sources: list[dict[str, Any]], scopes: list[Mapping[str, Any]],
           doc: Mapping[str, Any], where: str, reader: Reader, *, in_slice: bool = True) -> dict[str, Any]:
    models = [s["model"] for s in sources]
    if method == PASSTHROUGH:
        if len(sources) != 1:
            raise ValueError(f"{where}: passthrough takes exactly one source per slice (got {len(sources)}: "
                             f"{models}); stack models by giving each its own slice")
        for j, scope in enumerate([sources[0]["parameters"], *scopes]):
            check_known_keys(scope, ("scale",), f"{where}: passthrough parameters (level {j}) ")
        scale = reader.chain([scope.get("scale") for scope in [sources[0]["parameters"], *scopes]],
                             f"{where}: parameters.scale")
        return {"sources": _public(sources), "merge": None, "scale": scale}
    row = METHODS[method]
    if row.kind != "linear" and base is None:
        raise ValueError(f"{where}: merge_method={method} needs base_model (set it at the top level or in the "
                         f"slice)")
    if row.kind != "linear" and base not in models:
        raise ValueError(f"{where}: base_model {base!r} is not among the sources {models}; mergekit merges a "
                         f"slice's sources only, so add the base with its layer_range")
    sub = {"merge_method": method, "base_model": base if row.kind != "linear" or base in models else None,
           "models": [{"model": s["model"], "parameters": s["parameters"]} for s in sources]}
    cfg = reader.models_cfg(sub, where, scopes, in_slice=in_slice)
    for key in ("dtype", "out_dtype"):
        if doc.get(key) is not None:
            cfg[key] = doc[key]
    return {"sources": _public(sources), "merge": cfg, "scale": None}


def _public(sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"model": s["model"], "layer_range": s["layer_range"]} for s in sources]


def _tokenizer_source(doc: Mapping[str, Any], source: str) -> str | dict[str, str] | None:
    """``base``, ``union`` or ``{"model": PATH}`` (mergekit's ``tokenizer_source``, or ``tokenizer.source``)."""
    value = doc.get("tokenizer_source")
    block = doc.get("tokenizer")
    if value is not None and block is not None:
        raise ValueError(f"{source}: give tokenizer_source or tokenizer, not both (mergekit refuses both)")
    if block is not None:
        if not isinstance(block, Mapping):
            raise ValueError(f"{source}: tokenizer={block!r} must be a mapping {{source: union}}")
        check_known_keys(block, TOKENIZER_KEYS, f"{source}: tokenizer.")
        value = block.get("source", "union")  # mergekit/tokenizer/config.py's default
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{source}: tokenizer_source={value!r} must be base, union or a model folder")
    if value in ("base", "union"):
        return value
    if "@" in value or "+" in value:
        raise ValueError(f"{source}: tokenizer_source={value!r}: give a local model folder (no @revision or "
                         f"+adapter)")
    return {"model": value}


def _chat_template(value: Any, source: str) -> str | None:
    """``auto``, one of mergekit's template names, or a Jinja template (mergekit/merge.py's rules)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{source}: chat_template={value!r} must be a string")
    if value == "auto" or value in CHAT_TEMPLATE_NAMES:
        return value
    if len(value) < 20 or "{" not in value:
        raise ValueError(f"{source}: chat_template={value!r} is neither 'auto', one of "
                         f"{', '.join(CHAT_TEMPLATE_NAMES)} nor a Jinja template")
    return value


def resolve_layout(layout: Mapping[str, Any]) -> list[MergeParams | None]:
    """Each slice's resolved parameters (None for passthrough): every check on values before any I/O."""
    return [None if s["merge"] is None else resolve_params(s["merge"], len(s["merge"]["models"]))
            for s in layout["slices"]]


def _pad_to(value: Any, source: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{source}: tokenizer.pad_to_multiple_of={value!r} must be a positive integer")
    return value


def _tokens(tokens: Any, source: str) -> dict[str, dict[str, Any]]:
    """``tokenizer.tokens`` (mergekit/tokenizer/config.py): token -> ``{source, force}``, the source a
    model folder (its own row of the token), ``{kind: zero}`` or ``{kind: model_token, model, token_id |
    token}``; normalised to ``{"source": {"kind": "model" | "zero" | "model_token", ...}, "force": bool}``."""
    if tokens is None:
        return {}
    if not isinstance(tokens, Mapping):
        raise ValueError(f"{source}: tokenizer.tokens={tokens!r} must map each token to {{source: ..., force: ...}}")
    out = {}
    for token, spec in tokens.items():
        where = f"{source}: tokenizer.tokens[{token!r}]"
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}={spec!r} must be {{source: ..., force: ...}}")
        check_known_keys(spec, ("source", "force"), f"{where}.")
        src, force = spec.get("source"), spec.get("force", False)
        if not isinstance(force, bool):
            raise ValueError(f"{where}.force={force!r} must be true or false")
        if isinstance(src, str):
            norm = {"kind": "model", "model": _model_path(src, f"{where}.source")}
        elif isinstance(src, Mapping) and src.get("kind") == "zero":
            check_known_keys(src, ("kind",), f"{where}.source.")
            norm = {"kind": "zero"}
        elif isinstance(src, Mapping) and src.get("kind") == "model_token":
            check_known_keys(src, ("kind", "model", "token_id", "token"), f"{where}.source.")
            if (src.get("token_id") is None) == (src.get("token") is None) or not src.get("model"):
                raise ValueError(f"{where}.source: a model_token source names a model and one of token_id, token")
            norm = {"kind": "model_token", "model": _model_path(src["model"], f"{where}.source.model"),
                    "token_id": src.get("token_id"), "token": src.get("token")}
        else:
            raise ValueError(f"{where}.source={src!r}: give a model folder, {{kind: zero}} or {{kind: model_token, "
                             f"model: PATH, token: ...}}")
        out[str(token)] = {"source": norm, "force": force}
    return out
