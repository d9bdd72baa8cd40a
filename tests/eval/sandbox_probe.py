"""Run the sandbox's attack battery as whoever starts this script; print one JSON report on stdout.

Used by tests/eval/test_sandbox_privileges.py under ``capsh --drop=cap_sys_admin`` and ``setpriv``
(an ordinary uid). Imports the sandbox module by path (stdlib only), so it needs no site-packages.
Usage: ``python sandbox_probe.py SANDBOX_PY WORKDIR [--unsafe|--no-namespaces]``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

SECRET = "sk-mixmerge-probe-secret"
LEFTOVER_UMASK = "0123"  # an escaped process marks itself with this umask (visible in /proc/PID/status)
FORGE_VIA_FRAMES = """
import os, sys
f = sys._getframe()
while f is not None:
    if 'token' in f.f_locals and 'wfd' in f.f_locals:
        os.write(f.f_locals['wfd'], f.f_locals['token'])
        os._exit(0)
    f = f.f_back
assert False, 'wrong answer'
"""


def attacks(home: Path, score: Path, port: int) -> dict[str, str]:
    """name -> program. Programs named ``contained_*`` pass only if the sandbox contained them."""
    return {
        "forge_frames": FORGE_VIA_FRAMES,
        "contained_secrets": (
            "import os, glob\nblob = repr(dict(os.environ)).encode()\n"
            f"for p in glob.glob('/proc/*/environ') + [{str(home / '.netrc')!r}, "
            f"{str(home / '.cache/huggingface/token')!r}]:\n"
            "    try:\n        blob += open(p, 'rb').read()\n    except OSError:\n        pass\n"
            f"assert {SECRET.encode()!r} not in blob, 'secret leaked'\n"),
        "contained_host_processes": (
            "import os\nblob = b''\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n"
            "        try:\n            blob += open(f'/proc/{p}/cmdline', 'rb').read()\n"
            "        except OSError:\n            pass\n"
            "assert b'sandbox_probe' not in blob and b'pytest' not in blob, blob[:300]\n"),
        "loopback": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n",
        "contained_ptrace": (
            "import os, sys\nfor pid in {1, os.getppid()}:\n    for what in ('mem', 'environ'):\n"
            "        try:\n            open(f'/proc/{pid}/{what}', 'rb').read(1)\n"
            "        except OSError:\n            continue\n"
            "        if what == 'mem' or b'sk-' in open(f'/proc/{pid}/environ', 'rb').read():\n"
            "            raise SystemExit(f'read /proc/{pid}/{what}')\n"
            "try:\n    libc = sys.modules['_sandbox_isolation'].ctypes.CDLL(None)\n"
            "    assert libc.ptrace(16, os.getppid(), 0, 0) != 0, 'attached to the monitor'\n"
            "except PermissionError:\n    pass\n"),
        "memory_total": ("import os\nr, w = os.pipe()\nfor _ in range(5):\n    if os.fork() == 0:\n"
                         "        block = b'x' * (150 << 20)\n        os.write(w, b'1')\n        import time\n"
                         "        time.sleep(1)\n        os._exit(0)\nblock = b'x' * (150 << 20)\nos.close(w)\n"
                         "got = b''\nwhile chunk := os.read(r, 8):\n    got += chunk\nassert len(got) == 5\n"),
        "kill_all": ("import os, signal, time\nfor sig in (signal.SIGSTOP, signal.SIGKILL):\n    try:\n"
                     "        os.kill(-1, sig)\n    except OSError:\n        pass\ntime.sleep(1)\n"),
        "escape_and_rewrite": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.umask(0o{LEFTOVER_UMASK})\n"
            "        for _ in range(40):\n            try:\n"
            f"                open({str(score)!r}, 'w').write('{{\"pass@1\": 1.0}}')\n"
            "            except OSError:\n                pass\n            time.sleep(0.05)\n"
            "    os._exit(0)\ntime.sleep(0.2)\nos._exit(0)\n"),
    }


def main() -> None:
    sandbox_py, workdir = Path(sys.argv[1]), Path(sys.argv[2])
    flags = set(sys.argv[3:])
    spec = importlib.util.spec_from_file_location("probe_sandbox", sandbox_py)
    sandbox = importlib.util.module_from_spec(spec)
    sys.modules["probe_sandbox"] = sandbox
    spec.loader.exec_module(sandbox)
    home = workdir / "home"
    (home / ".cache/huggingface").mkdir(parents=True, exist_ok=True)
    (home / ".netrc").write_text(f"machine example.com login me password {SECRET}\n")
    (home / ".cache/huggingface/token").write_text(SECRET)
    os.environ.update(HOME=str(home), HF_TOKEN=SECRET, WANDB_API_KEY=SECRET)
    score = workdir / "score.json"
    score.write_text('{"pass@1": 0.0}')
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(4)
    accepted: list = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(server.accept())

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    bystander = subprocess.Popen(["sleep", "30"])
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    programs = attacks(home, score, server.getsockname()[1])
    if "--no-namespaces" in flags:  # without a pid namespace kill(-1) would take the probe down too
        programs.pop("kill_all")
    report: dict = {"uid": os.geteuid()}
    try:
        results = sandbox.run_programs(list(programs.values()), timeout_s=6, memory_mb=512, workers=2,
                                       allow_unsafe="--unsafe" in flags,
                                       namespaces="--no-namespaces" not in flags)
        report["results"] = {name: [r.status, r.detail] for name, r in zip(programs, results, strict=True)}
    except sandbox.UnsafeSandboxError as exc:
        report["refused"] = str(exc)
    time.sleep(0.6)  # give an escaped process time to strike (it retries every 50 ms)
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)  # wakes the acceptor
    acceptor.join()
    server.close()
    state = Path(f"/proc/{bystander.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    report["bystander_state"] = state
    bystander.kill()
    bystander.wait()
    report["accepted"] = len(accepted)
    report["score"] = score.read_text()
    report["leftovers"] = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _umask(p) == LEFTOVER_UMASK)
    report["log"] = records
    print(json.dumps(report))



def _umask(proc: Path) -> str:
    try:
        status = (proc / "status").read_text()
    except OSError:
        return ""
    return next((line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), "")


if __name__ == "__main__":
    main()
