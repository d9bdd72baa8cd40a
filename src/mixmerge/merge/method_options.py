"""The settings of mergekit's newer methods (SCE, NuSLERP, Multi-SLERP, Karcher, NearSwap), by their
mergekit names and defaults (mergekit 0.1.5, ``merge_methods/<method>.py``), and what each method reads
from a mergekit YAML. Torch-free: config validation reads it (``params.resolve_params``), the math does not.

NearSwap's distance threshold is mergekit's ``t`` (the same key as SLERP's, any finite number, required);
the per-model ``weight`` of NuSLERP, Multi-SLERP and Karcher is the shared ``weight``/``weights``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodOption:
    key: str
    default: Any
    kind: str  # "fraction" (a number > 0, or a layer gradient / filter rules), "bool", "count" (int >= 0), "positive"
    meaning: str


OPTIONS: dict[str, tuple[MethodOption, ...]] = {
    "sce": (MethodOption("select_topk", 1.0, "fraction",
                         "fraction of the entries (of nonzero variance across models) kept; >= 1 keeps all"),),
    "nuslerp": (MethodOption("nuslerp_flatten", True, "bool", "interpolate each tensor as one flat vector"),
                MethodOption("nuslerp_row_wise", False, "bool",
                             "without flatten: interpolate the vectors along the first axis, not the rows")),
    "multislerp": (MethodOption("normalize_weights", True, "bool", "divide the weights by their sum"),
                   MethodOption("eps", 1e-8, "positive", "added to norms (numerical safety)")),
    "karcher": (MethodOption("max_iter", 10, "count", "most fixed-point iterations"),
                MethodOption("tol", 1e-5, "positive", "convergence tolerance (and smallest norm that counts)")),
    "nearswap": (),
}
OPTION_KEYS: tuple[str, ...] = tuple(sorted({o.key for opts in OPTIONS.values() for o in opts}))
# The options that may vary by tensor (a gradient or filter rules, as in mergekit); the others are one value.
SCHEDULED_OPTIONS = ("select_topk",)
# The per-model keys mergekit reads for each of these methods (a mergekit YAML's others are ignored, as
# mergekit ignores them); mergekit requires a weight for every model of NuSLERP and Multi-SLERP.
MERGEKIT_PER_MODEL: dict[str, tuple[str, ...]] = {
    "sce": (), "nuslerp": ("weight",), "multislerp": ("weight",), "karcher": (), "nearswap": (),
}
REQUIRES_WEIGHT = ("nuslerp", "multislerp")


def check_option(option: MethodOption, value: Any, method: str) -> Any:
    """``value`` as the option's type (a plain value; fractions are checked by the caller per value)."""
    where = f"merge.{option.key}"
    if option.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where}={value!r} must be true or false ({option.meaning}; merge.method={method})")
        return value
    if option.kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}={value!r} must be a whole number >= 0 ({option.meaning}; "
                             f"merge.method={method})")
        return value
    number = _finite(value, where)
    if option.kind == "positive" and number <= 0:
        raise ValueError(f"{where}={value!r} must be a positive number ({option.meaning}; merge.method={method})")
    if option.kind == "fraction" and number <= 0:
        raise ValueError(f"{where}={value!r} must be above 0 ({option.meaning}; 0 would keep nothing and return "
                         f"the base; merge.method={method})")
    return number


def _finite(value: Any, where: str) -> float:
    if isinstance(value, str):  # a YAML string such as 1e-5 (PyYAML reads exponents without a dot so)
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{where}={value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
        raise ValueError(f"{where}={value!r} is not a finite number")
    return float(value)


def foreign_option(keys, method: str) -> str | None:
    """The first key of ``keys`` that is another method's option (set, so silently unused), or None."""
    own = {o.key for o in OPTIONS.get(method, ())}
    return next((k for k in keys if k in OPTION_KEYS and k not in own), None)


def owner_of(key: str) -> str:
    return next(m for m, opts in OPTIONS.items() if any(o.key == key for o in opts))
