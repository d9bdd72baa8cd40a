"""The forgetting check: what each variant lost (or gained) against the base on the general tasks.

Pure: metric dicts in, numbers out. For every ``lm_eval/<task>/<metric>`` that both a variant and the
base have with lm-eval's standard error (``<metric>_stderr`` beside it), the change is
``variant - base`` with a 95% interval ``change ± 1.96 * sqrt(se_variant² + se_base²)``: the normal
interval for the difference of two independent means. Both models answer the same items, so the two
scores are positively correlated and this unpaired interval is wider than a paired one would be: it
flags a loss only when it is clear (conservative), never more often. A loss is significant when the
whole interval lies on the losing side of zero (below for accuracy, above for perplexity-like metrics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

Z_95 = 1.96
PREFIX = "lm_eval/"
STDERR_SUFFIX = "_stderr"
# lm-eval metrics where lower is better (everything else it reports, acc/acc_norm/exact_match/f1/..., is higher).
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter"})


@dataclass(frozen=True)
class Change:
    """One variant's change against the base on one general-task metric, with its 95% interval."""

    variant: str
    metric: str
    base: float
    value: float
    delta: float  # value - base
    low: float
    high: float
    higher_is_better: bool

    @property
    def significant_loss(self) -> bool:
        return self.high < 0 if self.higher_is_better else self.low > 0


def higher_is_better(metric: str) -> bool:
    """Direction of an ``lm_eval/<task>/<metric>`` name (a filter suffix such as ``,strict-match`` ignored)."""
    name = metric.rsplit("/", 1)[-1].split(",", 1)[0]
    return name not in LOWER_IS_BETTER


def changes_vs_base(metrics_by_variant: Mapping[str, Mapping[str, float]], *, base: str = "base",
                    z: float = Z_95) -> list[Change]:
    """Every variant's change against ``base`` on each general-task metric both have with a stderr.

    Metrics without a stderr (or a non-finite one) are skipped: no interval, no claim.
    """
    ref = metrics_by_variant.get(base) or {}
    out = []
    for variant, metrics in metrics_by_variant.items():
        if variant == base:
            continue
        for name in sorted(metrics):
            if not name.startswith(PREFIX) or name.endswith(STDERR_SUFFIX) or name not in ref:
                continue
            se_v, se_b = metrics.get(name + STDERR_SUFFIX), ref.get(name + STDERR_SUFFIX)
            if se_v is None or se_b is None or not (math.isfinite(se_v) and math.isfinite(se_b)):
                continue
            delta = float(metrics[name]) - float(ref[name])
            half = z * math.sqrt(float(se_v) ** 2 + float(se_b) ** 2)
            out.append(Change(variant, name, float(ref[name]), float(metrics[name]), delta, delta - half,
                              delta + half, higher_is_better(name)))
    return out


def changes_from_comparisons(comparisons, metrics_by_variant: Mapping[str, Mapping[str, float]], *,
                             base: str = "base") -> list[Change]:
    """The same changes from paired comparisons (``eval/evidence.py``: each variant against the base on
    the same items, a paired bootstrap interval): tighter than the unpaired interval, as valid."""
    out = []
    for c in comparisons:
        if c["b"] != base or not c["metric"].startswith(PREFIX):
            continue
        name = c["metric"]
        out.append(Change(c["a"], name, float(metrics_by_variant[base][name]),
                          float(metrics_by_variant[c["a"]][name]), float(c["difference"]), float(c["ci95"][0]),
                          float(c["ci95"][1]), higher_is_better(name)))
    return out


def describe_forgetting(changes: list[Change], *, base: str = "base",
                        what: str = "95% interval from lm-eval's stderr, unpaired") -> str | None:
    """The verdict line (the significant losses against the base, or that there were none), then one line
    per metric with every variant's change and interval. ``None`` when there is nothing to compare."""
    if not changes:
        return None
    losses = [c for c in changes if c.significant_loss]
    if losses:
        parts = [f"{c.variant} {c.metric.removeprefix(PREFIX)} {c.delta:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"
                 for c in losses]
        verdict = f"Forgetting check: significant loss against the {base}: {'; '.join(parts)} ({what})."
    else:
        metrics = sorted({c.metric.removeprefix(PREFIX) for c in changes})
        verdict = f"Forgetting check: no variant loses significantly against the {base} on {', '.join(metrics)} ({what})."
    lines = [verdict]
    for metric in sorted({c.metric for c in changes}):
        rows = [c for c in changes if c.metric == metric]
        lines.append(f"  {metric.removeprefix(PREFIX)} (base {rows[0].base:.3f}): " + "; ".join(
            f"{c.variant} {c.delta:+.3f} [{c.low:+.3f}, {c.high:+.3f}]" for c in rows))
    return "\n".join(lines)
