"""The parity cases as data: one row per mergekit YAML that both tools must agree on (or both refuse).

A row is ``Case(name, doc, models=..., random=...)``. ``doc`` is the mergekit YAML as a dict in which the
strings ``BASE``, ``M1``, ``M2``, ``M3`` (the random models of the row's architecture and dtype) and
``ADAPTER`` (a peft LoRA of BASE) stand for folders; ``random`` marks the methods whose masks are random
(compared statistically, never bit for bit). A method one tool does not know at run time (mergekit's
methods that mixmerge lacks) is reported as skipped, not as a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ARCHS = ("llama", "qwen2", "tied")  # Llama; Qwen2 (q/k/v biases); Llama with tied embeddings (no lm_head)
DTYPES = ("float32", "bfloat16")
PLACEHOLDERS = ("BASE", "M1", "M2", "M3", "ADAPTER")
RANDOM_METHODS = ("dare_ties", "dare_linear", "della", "della_linear")


@dataclass(frozen=True)
class Case:
    name: str
    doc: dict[str, Any]
    arch: str = "llama"
    dtype: str = "float32"  # the dtype the random models are saved in
    random: bool = False
    note: str = ""
    tags: tuple[str, ...] = field(default=())

    @property
    def method(self) -> str:
        return str(self.doc.get("merge_method"))


def _gta(method: str, **top) -> dict[str, Any]:
    """A task-vector merge of M1, M2 onto BASE with per-model weights (and densities for the sparsifiers)."""
    sparse = method not in ("task_arithmetic",)
    per = [{"weight": 0.6, **({"density": 0.5} if sparse else {})},
           {"weight": 0.4, **({"density": 0.7} if sparse else {})}]
    return {"merge_method": method, "base_model": "BASE",
            "models": [{"model": m, "parameters": p} for m, p in zip(("M1", "M2"), per, strict=True)],
            **({"parameters": top} if top else {})}


def method_doc(method: str) -> dict[str, Any]:
    """The plain YAML of ``method``: two specialists of BASE, mergekit's parameters."""
    if method == "linear":
        return {"merge_method": "linear", "models": [{"model": "M1", "parameters": {"weight": 0.5}},
                                                     {"model": "M2", "parameters": {"weight": 0.5}}]}
    if method == "slerp":
        return {"merge_method": method, "base_model": "M1", "models": [{"model": "M1"}, {"model": "M2"}],
                "parameters": {"t": 0.3}}
    if method == "nuslerp":  # mergekit's nuslerp reads a weight per model (required), not t
        return {"merge_method": method, "base_model": "BASE",
                "models": [{"model": "M1", "parameters": {"weight": 0.6}}, {"model": "M2", "parameters": {"weight": 0.4}}]}
    if method in ("model_stock", "karcher", "multislerp"):
        models = [{"model": m} for m in ("M1", "M2", "M3")]
        return {"merge_method": method, "base_model": "BASE", "models": models,
                **({"parameters": {"weight": 1.0}} if method == "multislerp" else {})}
    if method == "nearswap":
        return {"merge_method": "nearswap", "base_model": "M1", "models": [{"model": "M1"}, {"model": "M2"}],
                "parameters": {"t": 0.001}}
    if method == "sce":
        return {"merge_method": "sce", "base_model": "BASE", "models": [{"model": "M1"}, {"model": "M2"}],
                "parameters": {"select_topk": 0.5}}
    if method == "della" or method == "della_linear":
        doc = _gta(method)
        for entry in doc["models"]:
            entry["parameters"]["epsilon"] = 0.1
        return doc
    return _gta(method)


SHARED_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
                  "della", "della_linear", "slerp", "model_stock")
NEWER_METHODS = ("sce", "nuslerp", "multislerp", "karcher", "nearswap")  # mergekit's methods beyond the study's


def _method_cases() -> list[Case]:
    cases = []
    for method in (*SHARED_METHODS, *NEWER_METHODS):
        rnd = method in RANDOM_METHODS
        cases.append(Case(f"{method}", method_doc(method), random=rnd, tags=("method",)))
        cases.append(Case(f"{method} bf16 (dtype: null)", method_doc(method), dtype="bfloat16", random=rnd,
                          tags=("method", "dtype")))
        cases.append(Case(f"{method} bf16, dtype: bfloat16", {**method_doc(method), "dtype": "bfloat16"},
                          dtype="bfloat16", random=rnd, tags=("method", "dtype")))
    for method in ("linear", "ties", "slerp", "dare_ties", "model_stock"):
        rnd = method in RANDOM_METHODS
        cases.append(Case(f"{method} qwen2", method_doc(method), arch="qwen2", random=rnd, tags=("arch",)))
        cases.append(Case(f"{method} tied embeddings", method_doc(method), arch="tied", random=rnd, tags=("arch",)))
    return cases


def _feature_cases() -> list[Case]:
    ta, ties = method_doc("task_arithmetic"), method_doc("ties")
    three = {"merge_method": "ties", "base_model": "BASE",
             "models": [{"model": m, "parameters": {"weight": w}} for m, w in (("M1", 0.5), ("M2", 0.3), ("M3", 0.2))]}
    return [
        Case("top-level density gradient (3 models)", {**three, "parameters": {"density": [0.2, 0.5, 0.9]}}),
        Case("top-level weight gradient", {"merge_method": "task_arithmetic", "base_model": "BASE",
                                           "models": [{"model": "M1"}, {"model": "M2"}],
                                           "parameters": {"weight": [0.2, 0.8]}}),
        Case("per-model weight gradient", _with(ta, 0, weight=[0.1, 0.5, 1.0])),
        Case("density filters", {**ties, "models": [{"model": m["model"], "parameters": {"weight": 0.5}}
                                                    for m in ties["models"]],
                                 "parameters": {"density": [{"filter": "self_attn", "value": 0.3}, {"value": 0.8}]}}),
        Case("slerp t gradient", {**method_doc("slerp"), "parameters": {"t": [0, 0.5, 1]}}),
        Case("slerp t filters", {**method_doc("slerp"), "parameters": {
            "t": [{"filter": "self_attn", "value": 0.2}, {"filter": "mlp", "value": 0.7}, {"value": 0.5}]}}),
        Case("ties normalize: false", {**ties, "parameters": {"normalize": False}}),
        Case("ties rescale: true", {**ties, "parameters": {"rescale": True}}),
        Case("task_arithmetic normalize: true, lambda 0.7", {**ta, "parameters": {"normalize": True, "lambda": 0.7}}),
        Case("ties int8_mask", {**ties, "parameters": {"int8_mask": True}}),
        Case("breadcrumbs gamma 0.05", _with(_with(method_doc("breadcrumbs"), 0, gamma=0.05), 1, gamma=0.05)),
        Case("fp32 inputs, dtype: bfloat16", {**ties, "dtype": "bfloat16"}, tags=("dtype",)),
        Case("bf16 inputs, dtype: float32", {**ties, "dtype": "float32"}, dtype="bfloat16", tags=("dtype",)),
        Case("fp32 inputs, out_dtype: bfloat16", {**ties, "out_dtype": "bfloat16"}, tags=("dtype",)),
        Case("bf16 inputs, dtype: bfloat16, out_dtype: float32", {**ta, "dtype": "bfloat16", "out_dtype": "float32"},
             dtype="bfloat16", tags=("dtype",)),
        Case("base among models (with weight)", {**ta, "models": [*ta["models"],
                                                                  {"model": "BASE", "parameters": {"weight": 0.3}}]}),
        Case("linear with base_model", {**method_doc("linear"), "base_model": "BASE",
                                        "parameters": {"weight": 0.25}}),
        Case("numbers as YAML strings", _with(_with(ties, 0, weight="6e-1"), 1, density="7e-1")),
        Case("density > 1", _with(ties, 0, density=1.5)),
        Case("BASE+ADAPTER (LoRA)", {**ta, "models": [{"model": "BASE+ADAPTER", "parameters": {"weight": 1.0}}]}),
        Case("refuse: no weight", {"merge_method": "task_arithmetic", "base_model": "BASE",
                                   "models": [{"model": "M1"}, {"model": "M2"}]}),
        Case("refuse: t filters without fallback", {**method_doc("slerp"), "parameters": {
            "t": [{"filter": "self_attn", "value": 0.2}]}}),
        Case("refuse: della density + epsilon >= 1", _with(_with(method_doc("della"), 0, density=0.9, epsilon=0.15),
                                                           1, density=0.9, epsilon=0.15), random=True),
        Case("refuse: modules", {"merge_method": "linear", "modules": {"text": {"models": [
            {"model": "M1", "parameters": {"weight": 0.5}}, {"model": "M2", "parameters": {"weight": 0.5}}]}}}),
    ]


def _with(doc: dict[str, Any], index: int, **params) -> dict[str, Any]:
    """``doc`` with model ``index``'s parameters updated (a copy)."""
    models = [dict(m) for m in doc["models"]]
    models[index] = {**models[index], "parameters": {**(models[index].get("parameters") or {}), **params}}
    return {**doc, "models": models}


CASES: list[Case] = [*_method_cases(), *_feature_cases()]
