"""What the Slurm launcher costs per job on the loopback test cluster (`make cluster` first, then
`SLURM_CONF=outputs/cluster/slurm/slurm.conf python benchmarks/slurm_launcher_overhead.py`).

Submits trivial jobs through submitit (as hydra/launcher=slurm does) one after another and splits each
round trip into: sbatch -> the job's Python running (queue + start) and the job's end -> the result seen by
the submitting process (result file + polling). A real job adds the start of a fresh Python with mixmerge's
imports (hydra, mixmerge.job, torch, transformers, lightning), measured here too.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time


def _job(submitted: float) -> dict:
    started = time.time()
    t0 = time.time()
    import importlib

    # What a fresh job process imports before its work (a local multirun pays this once per sweep).
    for name in ("hydra", "mixmerge.job", "torch", "transformers", "lightning.pytorch"):
        importlib.import_module(name)

    return {"queue_start_s": started - submitted, "import_s": time.time() - t0, "ended": time.time()}


def main(n: int = 5) -> None:
    import submitit

    folder = tempfile.mkdtemp(prefix="slurm_overhead_")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(slurm_cpus_per_task=1, slurm_mem="1G", timeout_min=5)
    rows = []
    for _ in range(n):
        t0 = time.time()
        job = executor.submit(_job, t0)
        while not job.paths.result_pickle.exists():
            time.sleep(0.25)  # the launcher's default poll_s is 1.0; 0.25 here to see the floor
        out = job.result()
        rows.append({**out, "round_trip_s": time.time() - t0, "pickup_s": time.time() - out["ended"]})
    for key in ("round_trip_s", "queue_start_s", "import_s", "pickup_s"):
        values = [r[key] for r in rows]
        print(f"{key:>14}: median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
