"""The verdict on one parity case, from what each tool produced (pure: dicts of tensors or a refusal).

- ``identical``: both wrote the same tensor names, dtypes, shapes and bits.
- ``identical up to ties``: magnitude-trimmed methods (TIES, breadcrumbs) whose outputs differ only at
  positions where some model's |task vector| ties at a cut (k-th largest, or breadcrumbs' two cuts): which
  of the tied entries survive is the order of a sort, and mergekit's ``torch.argsort`` is not stable
  (mixmerge keeps the lowest indices). Differences elsewhere make it a MISMATCH.
- ``within tolerance``: deterministic methods where every entry is within ``ULPS`` units in the last
  place of the output dtype at the largest operand magnitude of that entry: the two results, the inputs
  and their task vectors (a rounding error scales with the operands, and base + the weighted task vectors
  may cancel to a much smaller result); the detail states the largest absolute difference and the share
  of differing entries.
- ``statistically consistent``: random methods (DARE, DELLA: the two tools draw their masks from different
  generators, so bits cannot agree). Pooled over every float tensor, the merged delta d = merged - base is
  compared: the share of changed entries (a two-proportion z-test, |z| <= Z_MAX), and the mean and standard
  deviation of the changed entries' d, each tensor's d divided by one scale common to both tools (the RMS
  of both tools' changed entries there, so that norms and matrices of very different scales pool
  evenly): means within Z_MAX standard errors, standard deviations within STD_RTOL of each other.
- ``refused by both``: each tool refused the YAML (mergekit exited with an error, mixmerge raised).
- ``MISMATCH``: anything else: one tool refused, names/dtypes/shapes differ, or the numbers disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

ULPS = 4  # error bound of a few roundings at the largest operand (rescaled task vectors reach 1/density x)
Z_MAX = 5.0
STD_RTOL = 0.05
EPS = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float64: 2.0**-52}

IDENTICAL, TIES, TOLERANCE, STATISTICAL, REFUSED, MISMATCH, SKIPPED = (
    "identical", "identical up to ties", "within tolerance", "statistically consistent", "refused by both",
    "MISMATCH", "skipped")


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
             base: Mapping[str, torch.Tensor] | None = None,
             ties: Callable[[str], torch.Tensor | None] | None = None,
             inputs: Sequence[Mapping[str, torch.Tensor]] = ()) -> Verdict:
    """The verdict on one case. ``base``: the base model's tensors (needed for random methods); ``inputs``:
    the other models' tensors (with the base, they scale the tolerance of deterministic ones); ``ties``:
    tensor name -> mask of the positions where a magnitude cut ties (None: the method has no such cut)."""
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
    return _deterministic(a, b, ties, base, inputs)


def _operand_scale(name, x, y, base, inputs) -> torch.Tensor:
    """Per entry: the largest of |x|, |y|, |base|, |input| and |input - base| over the inputs."""
    scale = torch.maximum(x.double().abs(), y.double().abs())
    b = base[name].double() if base is not None and name in base else None
    if b is not None:
        scale = torch.maximum(scale, b.abs())
    for m in inputs:
        if name in m and m[name].shape == x.shape:
            t = m[name].double()
            scale = torch.maximum(scale, t.abs())
            if b is not None:
                scale = torch.maximum(scale, (t - b).abs())
    return scale


def _deterministic(a, b, ties=None, base=None, inputs=()) -> Verdict:
    n_diff = n_all = n_tied = n_tie_positions = 0
    max_abs = 0.0
    worst = None
    for name in sorted(a):
        x, y = a[name], b[name]
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return Verdict(MISMATCH, f"{name}: integer tensors differ")
            continue
        n_all += x.numel()
        if torch.equal(x, y):
            continue
        diff = (x.double() - y.double()).abs()
        if not torch.isfinite(diff).all():
            return Verdict(MISMATCH, f"{name}: NaN/Inf in one output only")
        scale = _operand_scale(name, x, y, base, inputs)  # a rounding error is relative to the operands
        tol = ULPS * EPS[x.dtype] * scale + torch.finfo(x.dtype).tiny
        tied = ties(name) if ties is not None else None
        if tied is not None:  # which tied entries survive a cut is a sort's order: excused, counted
            n_tie_positions += int(tied.sum())
            tied = tied.reshape(diff.shape) & (diff > 0)
            n_tied += int(tied.sum())
            diff = diff.masked_fill(tied, 0)
        outside = diff > tol
        if bool(outside.any()):
            i = int(torch.argmax(diff - tol))
            return Verdict(MISMATCH, f"{name}: {int(outside.sum())} entries beyond {ULPS} ulp"
                                     f"{' (not at tied magnitudes)' if tied is not None else ''}, e.g. "
                                     f"{float(x.reshape(-1)[i]):.6g} vs {float(y.reshape(-1)[i]):.6g}")
        within = diff
        n_diff += int(torch.count_nonzero(within))
        if not bool((within > 0).any()):
            continue
        d = float(within.max())
        if d > max_abs:
            max_abs, worst = d, name
    if n_tied:
        extra = f"; elsewhere max abs diff {max_abs:.3g}" if worst is not None else ""
        return Verdict(TIES, f"{n_tied} entries differ, all among the {n_tie_positions} where magnitudes tie at "
                             f"a cut{extra}")
    if worst is None:
        return Verdict(IDENTICAL)
    return Verdict(TOLERANCE, f"max abs diff {max_abs:.3g} ({worst}), {100 * n_diff / n_all:.2g} % of entries differ")


def cut_ties(deltas: list[torch.Tensor], sparsify: str, densities: list[float], gammas: list[float]) -> torch.Tensor:
    """Positions where some model's |delta| equals a tied value at its magnitude cut: ``magnitude`` keeps the
    k = max(1, int(density n)) largest; ``breadcrumbs`` keeps ascending ranks n_bottom .. n_bottom + k - 1
    (k = int(density n), n_bottom = n - k - int(gamma n)), as mergekit/sparsify.py."""
    tied = torch.zeros(deltas[0].shape, dtype=torch.bool)
    for d, density, gamma in zip(deltas, densities, gammas, strict=True):
        if density >= 1:
            continue
        mag = d.abs().float().reshape(-1)
        n = mag.numel()
        ascending = mag.sort().values
        if sparsify == "magnitude":
            cuts = [n - max(1, int(density * n))]
        else:
            k = int(density * n)
            bottom = max(0, n - k - int(gamma * n))
            cuts = [bottom, bottom + k]
        for c in cuts:  # the cut lies between ascending[c - 1] (dropped) and ascending[c] (kept), or after
            if 0 < c < n and ascending[c - 1] == ascending[c]:
                tied |= (mag == ascending[c]).reshape(tied.shape)
    return tied


def variance_cut_ties(deltas: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """SCE's cut: positions whose variance across the models' task vectors (in the deltas' dtype) ties at the
    top-k cut, k = int(fraction * nonzero variances), as mergekit/merge_methods/sce.py selects them."""
    var = torch.var(torch.stack(deltas), dim=0, unbiased=False).abs().float()
    tied = torch.zeros(var.shape, dtype=torch.bool)
    k = int(torch.count_nonzero(var) * fraction)
    if fraction >= 1 or k == 0:
        return tied
    descending = var.reshape(-1).sort(descending=True).values
    if k < descending.numel() and descending[k - 1] == descending[k]:  # kept k-1 vs dropped k tie
        tied |= var == descending[k]
    return tied


def delta_summary(merged: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
                  scales: Mapping[str, float] | None = None) -> tuple[int, int, float, float]:
    """(entries, changed entries, mean, std of the changed entries' (merged - base) / scales[name]), pooled
    over float tensors."""
    n = changed = 0
    s = s2 = 0.0
    for name, m in merged.items():
        if not m.is_floating_point() or name not in base:
            continue
        d = (m.double() - base[name].double()) / ((scales or {}).get(name) or 1.0)
        nz = d[d != 0]
        n += d.numel()
        changed += nz.numel()
        s += float(nz.sum())
        s2 += float((nz * nz).sum())
    mean = s / changed if changed else 0.0
    var = max(s2 / changed - mean * mean, 0.0) if changed else 0.0
    return n, changed, mean, math.sqrt(var)


def _common_scales(a, b, base) -> dict[str, float]:
    """Per tensor, the RMS of both tools' non-zero merged deltas together (one scale for both)."""
    scales = {}
    for name, x in a.items():
        if x.is_floating_point() and name in base:
            d = torch.cat([(t.double() - base[name].double()).reshape(-1) for t in (x, b[name])])
            nz = d[d != 0]
            scales[name] = float(nz.pow(2).mean().sqrt()) if nz.numel() else 1.0
    return scales


def _statistical(a, b, base) -> Verdict:
    scales = _common_scales(a, b, base)
    n_a, c_a, mean_a, std_a = delta_summary(a, base, scales)
    n_b, c_b, mean_b, std_b = delta_summary(b, base, scales)
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
