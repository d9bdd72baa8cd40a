"""Read a mergekit YAML into a mixmerge merge config, so users carry configs over with mergekit's meaning.

Supported: ``merge_method``, ``base_model``, ``models: [{model, parameters}]`` (a ``BASE+ADAPTER`` model is
the peft adapter folder ADAPTER of the base), ``parameters`` at the top level and per model, each a
number, a layer gradient (a list of numbers) or filter rules (``[{filter, value}, ...]``), read as
mergekit does (mergekit/config.py ``ConfigReader.parameter``): a model's own setting first, then the
top-level one, then the method's default; ``dtype`` (the compute dtype, as in mergekit; also the output dtype
without ``out_dtype``) and ``out_dtype`` (the output dtype); ``slices``, ``tokenizer_source``/``tokenizer``
and ``chat_template`` (read by ``mergekit_layout.py``). Refused with an error that names the key:
``modules``, what mergekit refuses
(a model with no ``weight``, rules with no fallback for a required parameter), and any other key, with
the closest known one (a typo such as ``densty`` must not merge untrimmed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mixmerge.merge.mergekit_layout import LAYOUT_KEYS, Reader, read_layout
from mixmerge.merge.method_options import (
    MERGEKIT_PER_MODEL,
    OPTION_KEYS,
    OPTIONS,
    REQUIRES_WEIGHT,
    SCHEDULED_OPTIONS,
)
from mixmerge.merge.params import as_number, check_known_keys
from mixmerge.merge.registry import METHODS

PER_MODEL = ("weight", "density", "epsilon", "gamma")
GLOBAL = ("lambda", "normalize", "rescale", "t", "filter_wise", "int8_mask")
SETTINGS = ("lambda", "t")  # the global keys that may be gradients or filter rules
GLOBAL = (*GLOBAL, *OPTION_KEYS)  # SCE's, NuSLERP's, Multi-SLERP's and Karcher's settings (method_options.py)
SETTINGS = (*SETTINGS, *SCHEDULED_OPTIONS)
UNSUPPORTED = ("modules",)
TOP_LEVEL = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", *UNSUPPORTED, *LAYOUT_KEYS)
MODEL_ENTRY = ("model", "parameters")
# The merge keys an imported file decides: the method YAML's defaults for them are dropped.
IMPORTED_KEYS = ("weight", "weights", "density", "epsilon", "gamma", "lambda", "normalize", "rescale", "t")
IMPORTED_KEYS = (*IMPORTED_KEYS, *OPTION_KEYS)


def _rules(setting: Any, where: str) -> list[dict[str, Any]]:
    """A mergekit setting as filter rules: a number or a gradient is one rule that matches everything."""
    if setting is None:
        return []
    if isinstance(setting, Mapping):
        raise ValueError(f"{where}={dict(setting)!r}: a single {{filter, value}} is not a mergekit setting; "
                         f"write a list of rules [{{filter: ..., value: ...}}, {{value: ...}}]")
    if isinstance(setting, Sequence) and not isinstance(setting, str):
        if setting and all(isinstance(r, Mapping) for r in setting):
            for rule in setting:
                check_known_keys(rule, ("filter", "value"), f"{where} rule ")
                _check_gradient(rule.get("value"), where)
            return [dict(rule) for rule in setting]
        _check_gradient(setting, where)
    return [{"filter": None, "value": setting}]


def _chain(settings: Sequence[Any], where: str) -> Any:
    """Settings, highest precedence first, as one setting (their rules in order); None when none is set."""
    rules = [r for setting in settings for r in _rules(setting, where)]
    return _simplify(rules) if rules else None


def _check_gradient(value: Any, where: str) -> None:
    if isinstance(value, Sequence) and not isinstance(value, str) and any(isinstance(v, str) for v in value):
        # mergekit/config.py steps through a list holding strings instead of interpolating it
        raise ValueError(f"{where}={list(value)!r}: a gradient holding strings; write its numbers as numbers "
                         f"(0.8 rather than 8e-1, which YAML reads as a string)")


def _simplify(rules: list[dict[str, Any]]) -> Any:
    """Rules as the merge config takes them: the number itself when the first rule is one number for all."""
    first = rules[0]
    value = first.get("value")
    if first.get("filter") in (None, "*") and not (isinstance(value, Sequence) and not isinstance(value, str)):
        return value
    if first.get("filter") in (None, "*"):
        return list(value)
    return rules


def _adapter_of(model: str, base: Any, where: str) -> str:
    """mergekit's ``MODEL+LORA``: the LoRA applied to MODEL. Merging the adapter folder as a specialist of
    the base is the same thing, so ``BASE+ADAPTER`` becomes ADAPTER; another model under the LoRA is refused."""
    if "+" not in model:
        return model
    target, adapter = model.split("+", 1)
    if base is None or target != str(base):
        raise ValueError(f"{where}={model!r}: a LoRA applied to {target!r}, which is not base_model {base!r}; "
                         f"only BASE+ADAPTER (the adapter of the base) is supported")
    return adapter


def mergekit_to_merge_cfg(doc: Mapping[str, Any], source: str = "mergekit YAML") -> dict[str, Any]:
    """Translate a parsed mergekit config into ``merge.*`` keys (method, base, models, weights, ...).

    ``slices``, ``tokenizer_source``/``tokenizer`` and ``chat_template`` give a ``layout`` key
    (``mergekit_layout.read_layout``) that the standalone merge runs through ``merge/slices.py``."""
    check_known_keys(doc, TOP_LEVEL, f"{source}: ")
    for key in UNSUPPORTED:
        if doc.get(key) is not None:
            raise ValueError(f"{source}: mergekit key {key!r} is not supported by merge.from_mergekit; "
                             f"use mergekit itself for that config")
    if any(doc.get(key) is not None for key in LAYOUT_KEYS):
        return read_layout(doc, source, Reader(models_to_merge_cfg, _chain))
    return models_to_merge_cfg(doc, source, [doc.get("parameters") or {}])


def models_to_merge_cfg(doc: Mapping[str, Any], source: str, scopes: Sequence[Mapping[str, Any]],
                        *, in_slice: bool = False) -> dict[str, Any]:
    """``merge_method``, ``base_model`` and ``models`` of ``doc`` as ``merge.*`` keys; ``scopes`` are the
    shared ``parameters`` blocks, highest precedence first (a slice's, then the top level's: mergekit's
    ``ConfigReader.parameter_sources``). ``in_slice``: the models are one output slice's sources, to which
    mergekit adds no base (mergekit/plan.py ``normalize_config`` adds it to ``models:`` only)."""
    for j, scope in enumerate(scopes):
        check_known_keys(scope, (*PER_MODEL, *GLOBAL), f"{source}: parameters." if j == len(scopes) - 1
                         else f"{source}: slice parameters.")
    for i, entry in enumerate(doc.get("models") or []):
        check_known_keys(entry, MODEL_ENTRY, f"{source}: models[{i}].")
        check_known_keys(entry.get("parameters") or {}, PER_MODEL, f"{source}: models[{i}].parameters.")
    for scope in scopes:
        for key in GLOBAL:
            if key not in SETTINGS and isinstance(scope.get(key), Sequence) and not isinstance(scope.get(key), str):
                raise ValueError(f"{source}: parameters.{key}={scope[key]!r}: a gradient or filter rules of {key} "
                                 f"are not supported; use {'one value' if key in OPTION_KEYS else 'true or false'}")

    def shared_rules(key: str) -> list[dict[str, Any]]:
        return [r for scope in scopes for r in _rules(scope.get(key), f"{source}: parameters.{key}")]

    method = doc.get("merge_method")
    if not method:
        raise ValueError(f"{source}: no merge_method")
    base = doc.get("base_model")
    if base is not None and "+" in str(base):
        raise ValueError(f"{source}: base_model={base!r} applies a LoRA to the base; merge that LoRA into the "
                         f"base first, or list it as a model (BASE+ADAPTER)")
    row = METHODS.get(method)  # mergekit names only (not our aliases); an unknown method is refused later
    if row is not None and not row.in_mergekit:
        raise ValueError(f"{source}: merge_method={method!r} is not a mergekit method (mergekit 0.1.5 has none by "
                         f"that name), so a mergekit YAML cannot ask for it; run merge={method} merge.base=BASE "
                         f"'merge.models=[A,B]' merge.output=OUT instead")
    entries = [dict(e) for e in (doc.get("models") or [])]
    for i, e in enumerate(entries):
        e["model"] = _adapter_of(str(e.get("model")), base, f"{source}: models[{i}].model")
    if base is not None:
        if method in ("slerp", "nearswap"):
            others = [e for e in entries if e["model"] != str(base)]
            if len(others) != 1:
                raise ValueError(f"{source}: {method} needs base_model and exactly one other model")
            entries = [{"model": str(base)}, others[0]]
        elif row is not None and row.kind in ("linear", "karcher") and not in_slice:
            # mergekit/plan.py adds the base to the inputs, and linear averages every input (its weight:
            # the base's own entry, else parameters.weight); karcher too (its base policy: an input like any)
            if not any(e["model"] == str(base) for e in entries):
                entries.append({"model": str(base)})
        else:  # mergekit/merge_methods/generalized_task_arithmetic.py: the base gives no task vector
            entries = [e for e in entries if e["model"] != str(base)]
    elif method in ("slerp", "nearswap"):
        raise ValueError(f"{source}: {method} needs base_model and exactly one other model")
    if not entries:
        raise ValueError(f"{source}: no models to merge")
    cfg: dict[str, Any] = {"method": method, "base": base, "models": [e["model"] for e in entries]}
    per_model_keys = PER_MODEL if method != "slerp" else ()
    per_model_keys = MERGEKIT_PER_MODEL.get(method, per_model_keys)  # what mergekit reads for the method
    for key in per_model_keys:
        if key == "weight" and row is not None and row.kind == "model_stock":
            continue  # mergekit's model_stock reads no weights
        chains = [_rules((e.get("parameters") or {}).get(key), f"{source}: models[{i}].parameters.{key}")
                  + shared_rules(key) for i, e in enumerate(entries)]
        if key == "weight" and row is not None and (row.task_vector_family or method in REQUIRES_WEIGHT):
            for e, chain in zip(entries, chains, strict=True):
                if not any(r.get("filter") in (None, "*") for r in chain):
                    what = "has no weight" if not chain else "has weight rules with no fallback"
                    raise ValueError(f"{source}: model {e['model']!r} {what}; mergekit requires a weight for every "
                                     f"model (set models[].parameters.weight or parameters.weight)")
        if all(not chain for chain in chains):
            continue
        cfg_key = "weights" if key == "weight" else key
        cfg[cfg_key] = [_simplify(chain) if chain else None for chain in chains]
        if key != "weight" and any(v is None for v in cfg[cfg_key]):
            default = _default(key, row)
            cfg[cfg_key] = [default if v is None else v for v in cfg[cfg_key]]
        for i, chain in enumerate(chains):
            if key != "weight" and chain and not any(r.get("filter") in (None, "*") for r in chain):
                cfg[cfg_key][i] = [*chain, {"filter": None, "value": _default(key, row)}]
        if key == "density":
            cfg[cfg_key] = [_cap_density(v, f"{source}: density of model {e['model']!r}")
                            for v, e in zip(cfg[cfg_key], entries, strict=True)]
    for key in GLOBAL:
        if key in OPTION_KEYS and not any(o.key == key for o in OPTIONS.get(method, ())):
            continue  # another method's setting: mergekit does not read it
        given = [scope[key] for scope in scopes if scope.get(key) is not None]
        if given and key != "int8_mask":
            cfg[key] = _simplify(shared_rules(key)) if key in SETTINGS else given[0]
    if method in ("slerp", "nearswap") and cfg.get("t") is None:
        raise ValueError(f"{source}: {method} needs parameters.t (mergekit requires it)")
    for key in ("dtype", "out_dtype"):  # mergekit's compute and output dtypes
        if doc.get(key) is not None:
            cfg[key] = doc[key]
    return cfg


def _cap_density(value: Any, where: str) -> Any:
    """A density above 1 keeps the whole task vector in mergekit (mergekit/sparsify.py returns the tensor
    when density >= 1), as 1 does: a number above 1 becomes 1. In a gradient or rule the interpolated
    values would differ, so one above 1 there is refused."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        rules = value if value and all(isinstance(r, Mapping) for r in value) else [{"value": value}]
        for rule in rules:
            v = rule.get("value")
            for x in (v if isinstance(v, Sequence) and not isinstance(v, str) else [v]):
                if as_number(x, where) > 1:
                    raise ValueError(f"{where}: {x!r} above 1 in a gradient or filter rule; write 1 (a density "
                                     f"of 1 or more keeps the whole task vector)")
        return value
    return min(as_number(value, where), 1.0)


def _default(key: str, row) -> float:
    """mergekit's defaults (mergekit/merge_methods/generalized_task_arithmetic.py): density 1, gamma
    0.01, epsilon 0.15 (our registry rows hold them)."""
    if key == "density":
        return 1.0
    if row is None:
        return 0.0
    return row.default_gamma if key == "gamma" else row.default_epsilon


def load_mergekit_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"merge.from_mergekit={str(path)!r} does not exist")
    return mergekit_to_merge_cfg(yaml.safe_load(path.read_text()) or {}, str(path))
