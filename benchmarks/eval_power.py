"""Which comparisons does an evaluation have the power to decide, and how many examples would it take?

Reads a finished ``strategy=compare`` run (its ``metrics.json`` and the per-example ``samples.json`` of
each variant's cached evaluation, found through the run's log) and prints, for every paired comparison the
verdict rests on: the difference, its 95% interval, the p-value, whether it separates, and the number of
examples at which a paired test would separate a difference of this size with 80% power
(n = (z_0.975 + z_0.8)^2 * sd_d^2 / d^2, sd_d the standard deviation of the per-example paired
differences: a normal approximation, good enough to size an evaluation, not to report a result).

    python benchmarks/eval_power.py outputs/runs/DATE/TIME
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np

from mixmerge.eval.suite import load_samples

Z = 1.959964 + 0.841621  # two-sided 5% level, 80% power
EVAL_LINE = re.compile(r"cache (?:hit|miss): (?:building )?evaluation of (\S+) ([0-9a-f]{20})")


def eval_dirs(run_dir: Path, cache_root: Path) -> dict[str, Path]:
    """variant -> its evaluation folder in the cache, from the run's log lines."""
    found = {}
    for line in (run_dir / "run.log").read_text().splitlines():
        if m := EVAL_LINE.search(line):
            found[m.group(1)] = cache_root / "eval" / m.group(2)
    return found


def per_example_differences(a, b) -> np.ndarray:
    """Per-example contribution to a − b: for a ratio metric, each example's share of the ratio's change."""
    b = b.aligned_to(a.ids)
    return (a.numerators / a.denominators.mean()) - (b.numerators / b.denominators.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    record = json.loads((args.run_dir / "metrics.json").read_text())
    cache_root = Path(record["config"]["cache"]["root"])
    samples = {v: load_samples(d) for v, d in eval_dirs(args.run_dir, cache_root).items()}
    print(f"{'a − b':48s} {'metric':26s} {'diff':>9s} {'95% CI':>21s} {'p':>8s} {'n':>4s} sep  n for 80% power")
    for c in record["comparisons"]:
        need = "–"
        a, b = samples.get(c["a"], {}).get(c["metric"]), samples.get(c["b"], {}).get(c["metric"])
        if a is not None and b is not None:
            d = per_example_differences(a, b)
            sd = float(d.std(ddof=1))
            if c["difference"] != 0 and sd > 0:
                need = str(math.ceil(Z ** 2 * sd ** 2 / float(np.mean(d)) ** 2))
        sep = "yes" if not (c["ci95"][0] <= 0 <= c["ci95"][1]) else "no"
        ci = f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"
        print(f"{c['a'] + ' − ' + c['b']:48s} {c['metric']:26s} {c['difference']:+9.4f} {ci:>21s} "
              f"{c['p_value']:8.3g} {c['n']:4d} {sep:4s} {need}")
    print("verdict:", record["verdict"])


if __name__ == "__main__":
    main()
