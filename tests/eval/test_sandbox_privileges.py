"""The attack battery of sandbox_probe.py, run as root, as root without CAP_SYS_ADMIN (capsh) and as an
ordinary uid (setpriv): no forged pass, no secret, host process or listener reached, the harness and a
bystander unharmed, score.json untouched, no process left behind; and where isolation cannot be had,
nothing runs unless the user opts in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import mixmerge.eval.sandbox as sandbox

PROBE = Path(__file__).with_name("sandbox_probe.py")
ORDINARY_UID = 4242
CONTAINED = {"forge_frames": False, "loopback": False, "escape_and_rewrite": False, "memory_total": False,
             "contained_secrets": True,
             "contained_host_processes": True, "contained_ptrace": True, "kill_all": True}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching identity and dropping capabilities need root")


def _closed_ancestor(path: str) -> str | None:
    parts = Path(path).resolve().parts
    for i in range(2, len(parts) + 1):
        here = Path(*parts[:i])
        if not here.stat().st_mode & 0o001:
            return str(here)
    return None


def _as_ordinary_user(command: list[str]) -> list[str]:
    """Run ``command`` as ORDINARY_UID; when the interpreter lives in a closed folder (a 0700 /root),
    expose only the interpreter to that uid first, in a private mount namespace."""
    setpriv = ["setpriv", f"--reuid={ORDINARY_UID}", f"--regid={ORDINARY_UID}", "--clear-groups", *command]
    closed = _closed_ancestor(sys.base_prefix)
    if closed is None:
        return setpriv
    keep = str(Path(sys.base_prefix).resolve())
    script = ('set -e; stage=$(mktemp -d); mount --bind "$1" "$stage"; mount -t tmpfs -o mode=0755 tmpfs "$2"; '
              'mkdir -p "$1"; mount --bind "$stage" "$1"; shift 2; exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", keep, closed, *setpriv]


@pytest.fixture
def workdir():
    """A folder the ordinary uid can reach (pytest's tmp_path lies below a 0700 folder)."""
    path = Path(tempfile.mkdtemp(prefix="mixmerge-probe-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_probe(workdir: Path, mode: str, *flags: str) -> dict:
    for tool in {"root": [], "nocap": ["capsh"], "user": ["setpriv", "unshare"]}[mode]:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: install util-linux / libcap2-bin (apt-get install -y libcap2-bin)")
    command = [sys.executable, str(PROBE), sandbox.__file__, str(workdir), *flags]
    if mode == "nocap":
        command = ["capsh", "--drop=cap_sys_admin", "--", "-c", " ".join(command)]
    elif mode == "user":
        os.chown(workdir, ORDINARY_UID, ORDINARY_UID)
        command = _as_ordinary_user(command)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def assert_contained(report: dict) -> None:
    results = report["results"]
    for name, should_pass in CONTAINED.items():
        status, detail = results[name]
        assert (status == "passed") == should_pass, (name, status, detail)
    assert report["accepted"] == 0, "a sample reached a loopback listener"
    assert report["bystander_state"] in ("S", "R"), "a sample stopped or killed a process of the harness"
    assert json.loads(report["score"]) == {"pass@1": 0.0}, "a sample rewrote score.json"
    assert report["leftovers"] == 0, "a sample's process outlived its job"


@needs_root
@pytest.mark.parametrize("mode", ["root", "nocap", "user"])
def test_attacks_are_contained_in_every_privilege_mode(workdir, mode):
    report = run_probe(workdir, mode)
    assert "refused" not in report, report.get("refused")
    assert_contained(report)
    identity = report["log"][-1]
    if mode == "user":
        assert report["uid"] == ORDINARY_UID
        assert f"harness's uid {ORDINARY_UID} inside a user namespace, with no capabilities" in identity
    else:  # root, with or without CAP_SYS_ADMIN, never runs samples as root and says so
        assert "samples run as nobody (uid 65534)" in identity, identity
        assert ("user namespace True" in identity) == (mode == "nocap"), identity


@needs_root
def test_an_ordinary_user_without_namespaces_is_refused_with_what_is_missing(workdir):
    report = run_probe(workdir, "user", "--no-namespaces")
    assert "results" not in report
    assert "eval.allow_unsafe_sandbox=false" in report["refused"]
    assert f"Samples would run as the harness's own uid {ORDINARY_UID}" in report["refused"]
    assert json.loads(report["score"]) == {"pass@1": 0.0}


@needs_root
def test_opting_in_to_the_unsafe_fallback_runs_and_logs_what_is_missing(workdir):
    report = run_probe(workdir, "user", "--no-namespaces", "--unsafe")
    assert report["results"]["forge_frames"][0] != "passed"
    assert report["results"]["loopback"][0] != "passed" and report["accepted"] == 0
    assert any("running WITHOUT namespaces" in line for line in report["log"])
    assert f"samples run as the harness's own uid {ORDINARY_UID}" in report["log"][-1]
