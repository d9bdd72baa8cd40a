"""Kernel isolation for the sandbox launcher and its jobs: namespaces, mounts, cgroups (stdlib only).

Imported by ``_zygote.py`` (run with ``python -I``), never by the harness. The launcher calls
:func:`prepare_launcher` once; each job's trusted monitor calls :func:`enter_job_namespaces` and
:func:`mount_job_proc`. Every step reports what it could not get, so the harness can refuse to run
untrusted code with half an isolation (see ``describe_missing``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import tempfile
import time

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWIPC = 0x00020000, 0x10000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 2
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1
SYS_MOUNT_SETATTR = 442  # the same number on x86_64 and aarch64 (generic syscall table)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
NOBODY_ID = 65534
CGROUP_ROOT = "/sys/fs/cgroup"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _failed(what: str) -> str:
    return f"{what}: {os.strerror(ctypes.get_errno())}"


def unshare(flags: int, what: str) -> str | None:
    """``None`` on success, else why not (for the report)."""
    return None if _libc.unshare(flags) == 0 else _failed(what)


def prctl(option: int, value: int) -> None:
    _libc.prctl(option, value, 0, 0, 0)


def mount_tmpfs(target: str, size_mb: int, mode: str = "1777") -> bool:
    opts = f"size={size_mb}m,mode={mode}".encode()
    return _libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) == 0


def _bind(src: str, dst: str, flags: int = 0) -> bool:
    return _libc.mount(src.encode(), dst.encode(), None, MS_BIND | MS_REC | flags, None) == 0


def _make_readonly(path: str) -> bool:
    """Every mount at or below ``path`` read-only, in this mount namespace only."""

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    return _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE, ctypes.byref(attr),
                         ctypes.sizeof(attr)) == 0


def _enter_user_namespace(root: bool) -> str | None:
    """Become root of a new user namespace (the way to get the other namespaces without CAP_SYS_ADMIN).

    A helper left in the parent namespace writes the id maps: as root (with CAP_SETUID there) it maps
    root and ``nobody`` onto themselves, so samples can still drop to the real ``nobody``; as an
    ordinary user only the user's own ids can be mapped, onto themselves.
    """
    uid, gid = os.getuid(), os.getgid()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.close(done_r)
        message = b"unshare failed"
        try:
            if os.read(go_r, 1) == b"1":
                target = f"/proc/{os.getppid()}"
                ids = ((0, 0), (NOBODY_ID, NOBODY_ID)) if root else ((uid, uid),)
                gids = ((0, 0), (NOBODY_ID, NOBODY_ID)) if root else ((gid, gid),)
                if not root:
                    with open(f"{target}/setgroups", "w") as f:
                        f.write("deny")
                for name, pairs in (("uid_map", ids), ("gid_map", gids)):
                    with open(f"{target}/{name}", "w") as f:
                        f.write("".join(f"{inner} {outer} 1\n" for inner, outer in pairs))
                message = b"ok"
        except OSError as exc:
            message = f"writing the id maps: {exc.strerror}".encode()
        finally:
            os.write(done_w, message)
            os._exit(0)
    os.close(go_r)
    os.close(done_w)
    err = unshare(CLONE_NEWUSER, "unshare(CLONE_NEWUSER)")
    os.write(go_w, b"0" if err else b"1")
    os.close(go_w)
    answer = os.read(done_r, 200).decode()
    os.close(done_r)
    os.waitpid(pid, 0)
    if err:
        return err
    if answer != "ok":
        return f"user namespace: {answer}"
    os.setresgid(0 if root else gid, 0 if root else gid, 0 if root else gid)
    return None


def _closed_ancestor(path: str) -> str | None:
    """The highest ancestor of ``path`` that other users cannot traverse (e.g. a 0700 /root)."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts) + 1):
        here = os.sep + os.path.join(*parts[:i])
        if not os.stat(here).st_mode & 0o001:
            return here
    return None


def _hide(targets: list[str], keep: list[str]) -> str | None:
    """Cover each target folder with an empty tmpfs, binding back (read-only) the ``keep`` paths
    inside it: the interpreter stays usable while the home's tokens, keys and caches vanish."""
    for target in sorted(set(targets), key=len):
        if target in ("", "/") or not os.path.isdir(target):
            continue
        inside = [k for k in keep if os.path.commonpath([k, target]) == target and os.path.isdir(k)]
        stages = []
        for path in inside:
            stage = tempfile.mkdtemp(prefix="mixmerge-keep-")
            if not _bind(path, stage):
                return _failed(f"bind {path}")
            stages.append((path, stage))
        if not mount_tmpfs(target, 1, "0755"):
            return _failed(f"tmpfs over {target}")
        for path, stage in stages:
            os.makedirs(path, exist_ok=True)
            if not _bind(stage, path):
                return _failed(f"bind back {path}")
            _libc.umount2(stage.encode(), MNT_DETACH)
            os.rmdir(stage)
    return None


def _cgroup_dirs() -> dict | None:
    """Writable cgroup folders for memory and process limits: ``{"memory": dir, "pids": dir,
    "version": 1|2}`` below this process's own cgroups, or None."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    v1 = {ctl: path for _, ctls, path in lines for ctl in ctls.split(",") if ctl in ("memory", "pids")}
    if len(v1) == 2:
        dirs = {ctl: f"{CGROUP_ROOT}/{ctl}{path.rstrip('/')}" for ctl, path in v1.items()}
        if all(os.access(d, os.W_OK) for d in dirs.values()):
            return {**dirs, "version": 1}
    unified = next((path for hier, ctls, path in lines if hier == "0" and ctls == ""), None)
    if unified is not None:
        base = f"{CGROUP_ROOT}{unified.rstrip('/')}"
        try:
            with open(f"{base}/cgroup.subtree_control") as f:
                enabled = f.read().split()
        except OSError:
            return None
        if {"memory", "pids"} <= set(enabled) and os.access(base, os.W_OK):
            return {"memory": base, "pids": base, "version": 2}
    return None


def prepare_launcher(header: dict) -> dict:
    """Isolate the launcher itself (user, mount and network namespaces) and probe what each job gets.

    Returns the capabilities the monitors use, with ``missing``: what real isolation lacks here.
    """
    root = os.geteuid() == 0
    caps = {"userns": False, "mountns": False, "netns": False, "jobns": False, "readonly": False,
            "proc": False, "cgroup": None, "runner_uid": NOBODY_ID if root else os.getuid(), "launcher_uid": os.geteuid(),
            "missing": []}
    if not header.get("namespaces", True):
        caps["missing"].append("namespaces (disabled by the caller: namespaces=False)")
        prctl(PR_SET_DUMPABLE, 0)
        return caps
    missing = caps["missing"]
    err = unshare(CLONE_NEWNS, "unshare(CLONE_NEWNS)") if root else "not root"
    if err:
        uerr = _enter_user_namespace(root)
        if uerr is None:
            caps["userns"] = True
            err = unshare(CLONE_NEWNS, "unshare(CLONE_NEWNS) in the user namespace")
        else:
            missing.append(f"mount namespace ({err}) and user namespace ({uerr})")
    if err is None:
        caps["mountns"] = _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
        hidden = [h for h in header.get("hide", []) if h] + [
            c for c in {_closed_ancestor(p) for p in (header["prefix"], header["base_prefix"])} if c]
        herr = _hide(hidden, [header["prefix"], header["base_prefix"]]) if caps["mountns"] else "no private /"
        if herr:
            missing.append(f"hiding the harness's home ({herr})")
    elif caps["userns"]:
        missing.append(f"mount namespace ({err})")
    # after the id maps are written (a helper writes them through /proc): from here on, nothing the
    # samples run as can ptrace the launcher or its monitors, or read their memory or environment
    prctl(PR_SET_DUMPABLE, 0)
    nerr = unshare(CLONE_NEWNET, "unshare(CLONE_NEWNET)")
    caps["netns"] = nerr is None
    if nerr:
        missing.append(f"network namespace ({nerr})")
    if caps["mountns"]:
        _probe_job_namespaces(caps)
    caps["cgroup"] = _cgroup_dirs()
    if not root and not caps["userns"]:
        missing.append("a separate identity for samples (not root, and no user namespace)")
    return caps


def _probe_job_namespaces(caps: dict) -> None:
    """Try a job's isolation once in a throwaway child, so failures are known before any sample runs."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        report = {"jobns": False, "readonly": False, "proc": False, "why": []}
        try:
            err = enter_job_namespaces(1, report)
            if err is None:
                report["jobns"] = True
                inner = os.fork()
                if inner == 0:
                    os._exit(0 if mount_job_proc() else 1)
                _, status = os.waitpid(inner, 0)
                report["proc"] = status == 0
                if not report["proc"]:
                    report["why"].append("a private /proc (mount proc in the pid namespace refused)")
            else:
                report["why"].append(err)
        finally:
            os.write(w, json.dumps(report).encode())
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    report = json.loads(data)
    caps.update(jobns=report["jobns"], readonly=report["readonly"], proc=report["proc"])
    caps["missing"].extend(report["why"])


def enter_job_namespaces(file_mb: int, report: dict | None = None) -> str | None:
    """In the job's monitor: new pid, mount and IPC namespaces, everything read-only, a fresh tmpfs
    on /tmp. The pid namespace applies to the monitor's next child (the job's init)."""
    err = unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC, "unshare(CLONE_NEWPID|CLONE_NEWNS|CLONE_NEWIPC)")
    if err:
        return f"pid, mount and IPC namespaces per job ({err})"
    readonly = _make_readonly("/")
    if report is not None:
        report["readonly"] = readonly
        if not readonly:
            report["why"].append(_failed("a read-only view of the file system (mount_setattr)"))
    if not mount_tmpfs("/tmp", file_mb):
        return _failed("a private tmpfs on /tmp")
    return None


def mount_job_proc() -> bool:
    """In the job's pid 1: a /proc that shows only the job's own processes."""
    return _libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0


class JobCgroup:
    """Memory and process limits for one job's whole process tree, removed once it is empty."""

    def __init__(self, dirs: dict, name: str, memory_mb: int, max_procs: int):
        self.paths = sorted({dirs["memory"], dirs["pids"]})
        self.version = dirs["version"]
        self.name = name
        limits = ({"memory.max": memory_mb << 20, "memory.swap.max": 0, "pids.max": max_procs}
                  if self.version == 2 else {"memory.limit_in_bytes": memory_mb << 20, "pids.max": max_procs})
        self.made: list[str] = []
        # folder fds opened now, in the launcher's mount namespace, so the job's read-only view
        # cannot block the limits, the join or the final rmdir
        self.base_fds = [os.open(base, os.O_RDONLY | os.O_DIRECTORY) for base in self.paths]
        for base in self.paths:
            try:
                os.mkdir(f"{base}/{name}")
            except FileExistsError:  # left by a killed launcher with our pid; empty, or rmdir refuses
                os.rmdir(f"{base}/{name}")
                os.mkdir(f"{base}/{name}")
            self.made.append(f"{base}/{name}")
            for key, value in limits.items():
                file = f"{base}/{name}/{key}"
                if os.path.exists(file):
                    with open(file, "w") as f:
                        f.write(str(value))
        self.procs_fds = [os.open(f"{d}/cgroup.procs", os.O_WRONLY) for d in self.made]

    def join(self) -> None:
        """Called by the job's pid 1 before anything untrusted runs: its whole tree is limited."""
        for fd in self.procs_fds:
            os.write(fd, b"0")
            os.close(fd)

    def close_fds(self) -> None:
        for fd in self.procs_fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def remove(self, wait_s: float = 5.0) -> bool:
        """rmdir succeeds only once no process is left in the group: proof that the job is gone."""
        self.close_fds()
        deadline = time.monotonic() + wait_s
        for base_fd in self.base_fds[:len(self.made)]:
            while True:
                try:
                    os.rmdir(self.name, dir_fd=base_fd)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.002)
            os.close(base_fd)
        return True
