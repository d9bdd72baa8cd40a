"""A throw-away single-node Slurm cluster and PostgreSQL server on loopback, for tests and ``make cluster``.

Both come from Debian packages (``slurm-wlm``, ``munge``, ``postgresql``); ``ensure_packages`` installs
them with apt-get when they are missing and this process may (root). Everything else lives in one folder:
configs, state, logs, sockets. Nothing listens beyond 127.0.0.1.

    python -m mixmerge.cluster.testbed up   [DIR]   # start munge, slurmctld, slurmd and PostgreSQL
    python -m mixmerge.cluster.testbed down [DIR]   # stop them

The Slurm daemons run as root (``SlurmUser=root``) with process tracking by PID (no cgroups), which is what
a container allows; jobs run as the submitting user. There is no accounting daemon, so ``sacct`` is
unavailable: the mixmerge launcher watches ``squeue`` instead (see hydra_plugins/mixmerge_slurm_launcher).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGES = {"slurm": ("slurm-wlm", "munge"), "postgres": ("postgresql",)}
# The commands each package set must provide once installed.
COMMANDS = {"slurm": ("sbatch", "squeue", "slurmctld", "slurmd", "munged"), "postgres": ("initdb", "pg_ctl")}
STATE_FILE = "testbed.json"


class Unavailable(RuntimeError):
    """The servers cannot be installed or started here; the message says why (tests skip with it)."""


def postgres_bin() -> Path | None:
    """The folder holding initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(shutil.which("initdb")).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def _have(kind: str) -> bool:
    if kind == "postgres":
        return postgres_bin() is not None
    return all(shutil.which(c) or Path("/usr/sbin", c).exists() for c in COMMANDS[kind])


def ensure_packages(kinds: tuple[str, ...] = ("slurm", "postgres")) -> dict[str, float]:
    """Install the Debian packages that are missing; return the seconds apt took (empty when none was needed).
    Raises Unavailable with the reason when they cannot be installed (not root, no apt, apt failed)."""
    missing = [p for k in kinds if not _have(k) for p in PACKAGES[k]]
    if not missing:
        return {}
    if not shutil.which("apt-get"):
        raise Unavailable(f"{' '.join(missing)} missing and there is no apt-get to install them")
    if os.geteuid() != 0:
        raise Unavailable(f"{' '.join(missing)} missing; install them as root: "
                          f"apt-get install -y {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    times = {}
    for step, cmd in (("apt_update_s", ["apt-get", "update"]),
                      ("apt_install_s", ["apt-get", "install", "-y", "--no-install-recommends", *missing])):
        t0 = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times[step] = round(time.time() - t0, 1)
        if proc.returncode != 0:
            raise Unavailable(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-800:]}")
    still = [k for k in kinds if not _have(k)]
    if still:
        raise Unavailable(f"after apt-get install, {still} commands are still missing")
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = log.read_text()[-1500:] if log is not None and log.exists() else ""
    raise Unavailable(f"{what} did not come up within {timeout_s:.0f} s. {tail}")


def _kill_pidfile(pidfile: Path, timeout_s: float = 10.0) -> None:
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text().split()[0])
    except (ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _open_path_to(folder: Path) -> None:
    """Let a daemon running as another user (munge, postgres) traverse the folders down to ``folder``
    (pytest's and mktemp's folders are 0700)."""
    for p in [folder, *folder.parents]:
        if p == Path("/"):
            break
        p.chmod(p.stat().st_mode | 0o011)


def _run_checked(cmd: list[str], what: str, **kwargs) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise Unavailable(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-800:]}")


# -- Slurm ---------------------------------------------------------------------------------------------------
@dataclass
class SlurmCluster:
    """A running single-node cluster; ``env`` (SLURM_CONF) must reach every Slurm command, submitit's too."""

    root: str
    conf: str
    partition: str
    cpus: int
    mem_mb: int
    start_s: float

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": self.conf}

    def stop(self) -> None:
        """Cancel every job, stop the daemons, then end any job step left behind (its script runs from
        this cluster's spool folder), so no process of the test cluster outlives it."""
        root = Path(self.root)
        env = {**os.environ, **self.env}
        subprocess.run(["scancel", "--full", "-u", pwd.getpwuid(os.geteuid()).pw_name], env=env,
                       capture_output=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
            if out.returncode != 0 or not out.stdout.strip():
                break
            time.sleep(0.5)
        for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _kill_pidfile(root / name)
        for pid in _job_processes(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _job_processes(root: Path) -> list[int]:
    """Processes of jobs of the cluster in ``root``: job scripts run from its spool folder (their command
    line names it) and the slurmstepd parents that watch them."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(root) not in cmdline:
                continue
            pid = int(proc.name)
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
        pids += [pid, ppid] if parent == "slurmstepd" else [pid]
    return [p for p in dict.fromkeys(pids) if p != os.getpid()]


SLURM_CONF = """\
# Single-node test cluster written by mixmerge.cluster.testbed; loopback only.
ClusterName=mixmerge
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=300
SchedulerParameters=sched_interval=1
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def start_slurm(root: Path, *, partition: str = "debug", cpus: int | None = None,
                mem_mb: int | None = None) -> SlurmCluster:
    """munged, slurmctld and slurmd on 127.0.0.1 with one partition holding this machine's cores."""
    t0 = time.time()
    root = Path(root).resolve()
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    # Half the RAM for jobs (the rest stays for the daemons, the test runner and other users).
    mem_mb = mem_mb or (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20) // 2
    munge_socket = root / "munge" / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, ctld_port=free_port(), d_port=free_port(), root=root,
                                      munge_socket=munge_socket, cpus=cpus, mem_mb=mem_mb, partition=partition))
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create"], check=True, capture_output=True)
    # munged runs as the key's owner (Debian: user munge) and insists its folders belong to it.
    owner = pwd.getpwuid(key.stat().st_uid)
    (root / "munge").chmod(0o755)
    _open_path_to(root / "munge")
    os.chown(root / "munge", owner.pw_uid, owner.pw_gid)
    munged = shutil.which("munged") or "/usr/sbin/munged"
    cmd = [munged, f"--socket={munge_socket}", f"--pid-file={root / 'munge' / 'munged.pid'}",
           f"--log-file={root / 'munge' / 'munged.log'}", f"--seed-file={root / 'munge' / 'munged.seed'}",
           "--force"]
    if os.geteuid() == 0 and owner.pw_uid != 0:
        cmd = ["runuser", "-u", owner.pw_name, "--", *cmd]
    _run_checked(cmd, "munged")
    _wait(lambda: munge_socket.exists(), 15, "munged", root / "munge" / "munged.log")
    (root / "munged.pid").write_text((root / "munge" / "munged.pid").read_text())
    env = {**os.environ, "SLURM_CONF": str(conf)}
    _run_checked([shutil.which("slurmctld") or "/usr/sbin/slurmctld", "-f", str(conf)], "slurmctld", env=env)
    _run_checked([shutil.which("slurmd") or "/usr/sbin/slurmd", "-f", str(conf)], "slurmd", env=env)

    def node_idle() -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
        return out.strip().startswith("idle")

    _wait(node_idle, 60, "the Slurm node", root / "slurmctld.log")
    return SlurmCluster(str(root), str(conf), partition, cpus, mem_mb, round(time.time() - t0, 2))


# -- PostgreSQL ---------------------------------------------------------------------------------------------
@dataclass
class PostgresServer:
    """A running server; ``url`` is the SQLAlchemy URL of its ``optuna`` database (psycopg 3 driver)."""

    root: str
    port: int
    user: str
    start_s: float

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/optuna"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *cmd] if os.geteuid() == 0 else cmd

    def stop(self) -> None:
        pg_ctl = str(postgres_bin() / "pg_ctl")
        subprocess.run(self._as_owner([pg_ctl, "-D", f"{self.root}/data", "-m", "immediate", "stop"]),
                       capture_output=True)


def start_postgres(root: Path) -> PostgresServer:
    """initdb + pg_ctl start in ``root`` on 127.0.0.1 with trust authentication, and an ``optuna`` database.
    initdb refuses root, so as root the server runs as the ``postgres`` user (created by the package)."""
    t0 = time.time()
    bindir = postgres_bin()
    if bindir is None:
        raise Unavailable("PostgreSQL is not installed (initdb not found)")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    user = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError as e:
            raise Unavailable("running as root and there is no 'postgres' user to run the server as") from e
        pw = pwd.getpwnam(user)
        _open_path_to(root)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    server = PostgresServer(str(root), free_port(), user, 0.0)
    run = lambda cmd: subprocess.run(server._as_owner(cmd), capture_output=True, text=True)  # noqa: E731
    proc = run([str(bindir / "initdb"), "-D", f"{root}/data", "-A", "trust", "-U", user, "--no-sync"])
    if proc.returncode != 0:
        raise Unavailable(f"initdb failed: {proc.stderr[-800:]}")
    opts = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} -c fsync=off -c max_connections=100"
    proc = run([str(bindir / "pg_ctl"), "-D", f"{root}/data", "-l", f"{root}/postgres.log", "-o", opts,
                "-w", "-t", "60", "start"])
    if proc.returncode != 0:
        log = Path(root, "postgres.log")
        raise Unavailable(f"pg_ctl start failed: {proc.stderr[-400:]} {log.read_text()[-800:] if log.exists() else ''}")
    proc = run([str(bindir.parent / "bin" / "createdb") if (bindir / "createdb").exists() else "createdb",
                "-h", "127.0.0.1", "-p", str(server.port), "-U", user, "optuna"])
    if proc.returncode != 0:
        server.stop()
        raise Unavailable(f"createdb failed: {proc.stderr[-800:]}")
    server.start_s = round(time.time() - t0, 2)
    return server


# -- command line (make cluster) ----------------------------------------------------------------------------
def up(root: Path) -> dict:
    times = ensure_packages()
    slurm = start_slurm(root / "slurm")
    try:
        pg = start_postgres(root / "postgres")
    except Exception:
        slurm.stop()
        raise
    state = {"slurm": asdict(slurm), "postgres": asdict(pg), "install": times}
    (root / STATE_FILE).write_text(json.dumps(state, indent=2))
    return {**state, "slurm_conf": slurm.conf, "postgres_url": pg.url}


def down(root: Path) -> None:
    if not (root / STATE_FILE).is_file():
        raise SystemExit(f"no test cluster recorded in {root / STATE_FILE}; nothing to stop")
    state = json.loads((root / STATE_FILE).read_text())
    PostgresServer(**state["postgres"]).stop()
    SlurmCluster(**state["slurm"]).stop()
    (root / STATE_FILE).unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("dir", nargs="?", default="outputs/cluster")
    args = parser.parse_args()
    root = Path(args.dir).resolve()
    if args.action == "down":
        down(root)
        print(f"stopped the test cluster in {root}")
        return
    root.mkdir(parents=True, exist_ok=True)
    info = up(root)
    s = info["slurm"]
    print(f"Slurm: partition {s['partition']} with {s['cpus']} CPUs, {s['mem_mb']} MB (up in {s['start_s']} s)\n"
          f"  export SLURM_CONF={info['slurm_conf']}\n"
          f"PostgreSQL (up in {info['postgres']['start_s']} s):\n"
          f"  hydra.sweeper.storage={info['postgres_url']}\n"
          f"apt: {info['install'] or 'nothing to install'}\n"
          f"Stop both: make cluster-down")


if __name__ == "__main__":
    main()
