"""The verdict on one parity case, from what each tool produced (pure: dicts of tensors or a refusal).

- ``identical``: both wrote the same tensor names, dtypes, shapes and bits.
- ``within tolerance``: deterministic methods whose largest difference in every tensor is at most
  ``ULPS`` units in the last place of the output dtype at that tensor's largest magnitude (the detail
  states the largest absolute difference and the share of differing entries).
- ``statistically consistent``: random methods (DARE, DELLA: the two tools draw their masks from different
  generators, so bits cannot agree). Pooled over every float tensor, the merged delta d = merged - base is
  compared: the share of changed entries (a two-proportion z-test, |z| <= Z_MAX), and the mean and standard
  deviation of the changed entries' d (mean within Z_MAX standard errors; standard deviations within
  STD_RTOL of each other).
- ``refused by both``: each tool refused the YAML (mergekit exited with an error, mixmerge raised).
- ``MISMATCH``: anything else: one tool refused, names/dtypes/shapes differ, or the numbers disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

ULPS = 2
Z_MAX = 5.0
STD_RTOL = 0.05
EPS = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float64: 2.0**-52}

IDENTICAL, TOLERANCE, STATISTICAL, REFUSED, MISMATCH, SKIPPED = (
    "identical", "within tolerance", "statistically consistent", "refused by both", "MISMATCH", "skipped")


@dataclass(frozen=True)
class Outcome:
    """What one tool produced: its tensors, or the error it refused with."""

    tensors: Mapping[str, torch.Tensor] | None = None
    error: str | None = None

    @property
    def refused(self) -> bool:
        return self.tensors is None


@dataclass(frozen=True)
class Verdict:
    label: str
    detail: str = ""


def _short(msg: str | None) -> str:
    line = (msg or "").strip().splitlines()[-1] if (msg or "").strip() else ""
    return line[:160]


def classify(mergekit: Outcome, mixmerge: Outcome, *, random: bool,
             base: Mapping[str, torch.Tensor] | None = None) -> Verdict:
    """The verdict on one case (``base``: the base model's tensors, needed for random methods)."""
    if mergekit.refused and mixmerge.refused:
        return Verdict(REFUSED, f"mixmerge: {_short(mixmerge.error)}")
    if mergekit.refused:
        return Verdict(MISMATCH, f"only mergekit refused: {_short(mergekit.error)}")
    if mixmerge.refused:
        return Verdict(MISMATCH, f"only mixmerge refused: {_short(mixmerge.error)}")
    a, b = mergekit.tensors, mixmerge.tensors
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        return Verdict(MISMATCH, f"tensor names differ: only mergekit {only_a[:3]}, only mixmerge {only_b[:3]}")
    for name in sorted(a):
        if a[name].dtype != b[name].dtype or a[name].shape != b[name].shape:
            return Verdict(MISMATCH, f"{name}: mergekit {a[name].dtype} {tuple(a[name].shape)}, "
                                     f"mixmerge {b[name].dtype} {tuple(b[name].shape)}")
    if random:
        if base is None:
            raise ValueError("a random method's verdict needs the base tensors")
        return _statistical(a, b, base)
    return _deterministic(a, b)


def _deterministic(a, b) -> Verdict:
    n_diff = n_all = 0
    max_abs = 0.0
    worst = None
    for name in sorted(a):
        x, y = a[name], b[name]
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return Verdict(MISMATCH, f"{name}: integer tensors differ")
            continue
        if torch.equal(x, y):
            n_all += x.numel()
            continue
        diff = (x.double() - y.double()).abs()
        if not torch.isfinite(diff).all():
            return Verdict(MISMATCH, f"{name}: NaN/Inf in one output only")
        tol = ULPS * EPS[x.dtype] * float(x.double().abs().max())
        d = float(diff.max())
        n_diff += int(torch.count_nonzero(diff))
        n_all += x.numel()
        if d > max_abs:
            max_abs, worst = d, name
        if d > tol:
            return Verdict(MISMATCH, f"{name}: max abs diff {d:.3g} > {ULPS} ulp ({tol:.3g})")
    if worst is None:
        return Verdict(IDENTICAL)
    return Verdict(TOLERANCE, f"max abs diff {max_abs:.3g} ({worst}), {100 * n_diff / n_all:.2g} % of entries differ")


def delta_summary(merged: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> tuple[int, int, float, float]:
    """(entries, changed entries, mean, std of the changed entries' merged - base), pooled over float tensors."""
    n = changed = 0
    s = s2 = 0.0
    for name, m in merged.items():
        if not m.is_floating_point() or name not in base:
            continue
        d = m.double() - base[name].double()
        nz = d[d != 0]
        n += d.numel()
        changed += nz.numel()
        s += float(nz.sum())
        s2 += float((nz * nz).sum())
    mean = s / changed if changed else 0.0
    var = max(s2 / changed - mean * mean, 0.0) if changed else 0.0
    return n, changed, mean, math.sqrt(var)


def _statistical(a, b, base) -> Verdict:
    n_a, c_a, mean_a, std_a = delta_summary(a, base)
    n_b, c_b, mean_b, std_b = delta_summary(b, base)
    p_a, p_b = c_a / max(n_a, 1), c_b / max(n_b, 1)
    pooled = (c_a + c_b) / max(n_a + n_b, 1)
    se_p = math.sqrt(max(pooled * (1 - pooled) * (1 / max(n_a, 1) + 1 / max(n_b, 1)), 1e-300))
    z_p = abs(p_a - p_b) / se_p
    se_mean = math.sqrt(std_a**2 / max(c_a, 1) + std_b**2 / max(c_b, 1)) or 1e-300
    z_mean = abs(mean_a - mean_b) / se_mean
    std_ratio = std_b / std_a if std_a else (1.0 if std_b == 0 else math.inf)
    detail = (f"changed {100 * p_a:.2f} % vs {100 * p_b:.2f} % (z={z_p:.1f}); delta mean z={z_mean:.1f}; "
              f"std ratio {std_ratio:.3f}")
    if z_p <= Z_MAX and z_mean <= Z_MAX and abs(std_ratio - 1) <= STD_RTOL:
        return Verdict(STATISTICAL, detail)
    return Verdict(MISMATCH, detail)
