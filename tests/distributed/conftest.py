"""Real servers for the ``distributed`` tests: a single-node Slurm cluster and a PostgreSQL server on
loopback, started once per session in a temporary folder and stopped afterwards. Missing Debian packages
are installed (as root); where that is impossible the tests skip and say why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mixmerge.cluster import testbed
from tests.conftest import REPO

# The tiny model with tiny budgets; eval=quick keeps each job to seconds.
FAST = ["model=tiny", "logger=none", "trainer.max_steps=2", "task.max_train_examples=16",
        "task.max_eval_examples=8", "eval=quick", "eval.loss.limit=4", "analysis.enabled=false"]
# The shipped slurm.yaml asks for a GPU node (gpus_per_node: 1, 8 CPUs, 64 GB); the test node has 2 CPUs
# and no GPU, so each job asks for one core and 2 GB.
CPU_NODE = ["hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
            "hydra.launcher.timeout_min=20", "hydra.launcher.poll_s=0.5"]


def _install_or_skip(kinds: tuple[str, ...]) -> None:
    try:
        times = testbed.ensure_packages(kinds)
    except testbed.Unavailable as e:
        print(f"\nSKIP distributed tests: {e}", file=sys.stderr)
        pytest.skip(f"cannot install {kinds}: {e}")
    if times:
        print(f"\ninstalled the {kinds} Debian packages: {times}", file=sys.stderr)


def _server_dir(name: str) -> Path:
    """A folder for a server's state outside pytest's basetemp: another pytest session on this machine
    prunes old basetemp folders, which would pull the data from under a running server."""
    return Path(tempfile.mkdtemp(prefix=f"mixmerge-{name}-"))


@pytest.fixture(scope="session")
def slurm_cluster():
    _install_or_skip(("slurm",))
    root = _server_dir("slurm")
    cluster = testbed.start_slurm(root)  # installed but not starting is a failure, not a skip
    print(f"\nSlurm test cluster up in {cluster.start_s} s ({cluster.cpus} CPUs)", file=sys.stderr)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    _install_or_skip(("postgres",))
    root = _server_dir("postgres")
    server = testbed.start_postgres(root)
    print(f"\nPostgreSQL test server up in {server.start_s} s", file=sys.stderr)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def run_py(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` from the repository, with this checkout's sources first on the path."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO / "src"), **(env or {})}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    proc.wall_s = time.time() - t0  # type: ignore[attr-defined]
    return proc


def start_run_py(*args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env=full_env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
