"""Sweeps on a real single-node Slurm cluster through hydra/launcher=slurm (submitit + sbatch)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.distributed.conftest import CPU_NODE, FAST, run_py

pytestmark = pytest.mark.distributed

GRID = ["merge=ties,dare", "merge.weight=0.3,0.7"]


def _merged(sweep_dir) -> dict[tuple[str, float], dict]:
    out = {}
    for path in sorted(sweep_dir.glob("[0-9]*/metrics.json")):
        m = json.loads(path.read_text())
        out[(m["config"]["merge"]["method"], m["config"]["merge"]["weight"])] = m["variants"]["merged"]["metrics"]
    return out


def test_grid_on_slurm_trains_first_then_equals_the_local_grid(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    sweep = tmp_path / "slurm_sweep"
    proc = run_py("-m", "hydra/launcher=slurm", *CPU_NODE, *GRID, *FAST, f"cache.root={tmp_path / 'shared'}",
                  f"hydra.sweep.dir={sweep}", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    # Stage 1: one training job, before any merge job; it says where it trained what.
    assert log.count("Stage 1/2: training mixture + specialists for 4 job(s) as Slurm job") == 1, log[-3000:]
    m = re.search(r"Stage 1/2 done in \d+ s: Slurm job (\d+) on (\S+) trained (.*); already cached: nothing", log)
    assert m and "specialist/codegen" in m.group(3) and "mixture" in m.group(3), log[-3000:]
    prepared = json.loads((sweep / "prepare_0" / "prepared.json").read_text())
    assert prepared["slurm_job"] == m.group(1) and sorted(prepared["built"]) == [
        "mixture", "specialist/codegen", "specialist/codesum"]
    # Stage 2: four jobs, all under Slurm, none trained anything (all cache hits), run concurrently on the
    # shared cache (they evaluate the same base/specialists/mixture under its locks).
    for i in range(4):
        run_log = (sweep / str(i) / "run.log").read_text()
        assert "cache miss: building specialist" not in run_log and "cache miss: building mixture" not in run_log
        assert "cache hit: specialist/codegen" in run_log
    assert list((sweep / ".submitit").glob("*/*_log.out"))
    # The jobs evaluated the shared base/specialists/mixture concurrently: each evaluation built once.
    logs = [(sweep / str(i) / "run.log").read_text() for i in range(4)]
    for label in ("evaluation of base", "evaluation of specialist/codegen", "evaluation of mixture"):
        assert sum(f"cache miss: building {label} " in text for text in logs) == 1, label
    on_slurm = _merged(sweep)
    assert len(on_slurm) == 4 and len({json.dumps(v, sort_keys=True) for v in on_slurm.values()}) == 4

    local = tmp_path / "local_sweep"
    proc = run_py("-m", *GRID, *FAST, f"cache.root={tmp_path / 'local_cache'}", f"hydra.sweep.dir={local}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    here = _merged(local)
    assert here.keys() == on_slurm.keys()
    for point, metrics in here.items():
        assert on_slurm[point] == pytest.approx(metrics, rel=1e-6, abs=1e-9), point


def test_a_failing_job_is_reported_with_its_log(slurm_cluster, tmp_path):
    """A job that fails on the cluster: the sweep fails, and its own log shows the job, the error, the
    Slurm log's path and its last lines."""
    sweep = tmp_path / "sweep"
    proc = run_py("-m", "hydra/launcher=slurm", *CPU_NODE, *FAST, "merge=ties", "merge.density=0.5,1.5",
                  "hydra.launcher.prepare=false", "strategy.variants=[merged]",
                  f"cache.root={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", env=slurm_cluster.env)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert re.search(r"Job #1 \([^)]*merge.density=1.5[^)]*\) failed on the cluster \(Slurm job [\d_]+\)", log), log[-3000:]
    assert "merge.density" in log.split("failed on the cluster")[1][:800]
    assert "Slurm log: " in log and "last lines:" in log and f"run dir: {sweep / '1'}" in log
    assert (sweep / "0" / "metrics.json").is_file()  # the good job still ran


def _build_once(root: str, log: str) -> tuple[str, bool]:
    """One Slurm job: get-or-build the same artifact as its siblings; the build is slow and logs itself."""
    import os
    import time
    from pathlib import Path

    from mixmerge.cache import ArtifactStore

    def build(work: Path) -> dict:
        with open(log, "a") as f:
            f.write(f"{os.environ.get('SLURM_JOB_ID')} start {time.time()}\n")
        (work / "weights.bin").write_bytes(b"x" * 1000)
        time.sleep(3)
        with open(log, "a") as f:
            f.write(f"{os.environ.get('SLURM_JOB_ID')} end {time.time()}\n")
        return {"builder": os.environ.get("SLURM_JOB_ID")}

    art = ArtifactStore(root).get_or_build("specialist", {"task": "shared"}, build)
    assert (art.path / "weights.bin").stat().st_size == 1000
    return str(art.path), art.reused


def test_concurrent_jobs_build_a_shared_artifact_once(slurm_cluster, tmp_path, monkeypatch):
    """Four Slurm jobs ask the shared cache for one artifact at once: one builds it under the file lock,
    the others wait and reuse it; nothing half-built is ever seen (atomic rename)."""
    import submitit

    for k, v in slurm_cluster.env.items():
        monkeypatch.setenv(k, v)
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(slurm_cpus_per_task=1, slurm_mem="500M", timeout_min=5)
    log = tmp_path / "builds.log"
    jobs = executor.map_array(_build_once, [str(tmp_path / "cache")] * 4, [str(log)] * 4)
    results = [j.result() for j in jobs]
    assert len({path for path, _ in results}) == 1
    assert sorted(reused for _, reused in results) == [False, True, True, True]
    lines = log.read_text().split()
    assert lines.count("start") == 1 and lines.count("end") == 1
    assert not list((tmp_path / "cache" / "specialist").glob(".*.partial"))


def test_squeue_sees_the_test_cluster(slurm_cluster):
    out = subprocess.run(["sinfo", "-h", "-o", "%P %c %t"], env={**__import__("os").environ, **slurm_cluster.env},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "debug*" and int(out[1]) == slurm_cluster.cpus
