"""Every attack a completion can make on the harness must fail its sample and leave the machine alone."""

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mixmerge.eval.sandbox import UnsafeSandboxError, run_programs

PASSING_TEST = "def f(x):\n    return x + 1\n\nassert f(1) == 2\n"


def run_one(program: str, **kw):
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("memory_mb", 512)
    return run_programs([program], workers=1, **kw)[0]


def test_honest_programs_pass_and_fail_on_their_own_merits():
    results = run_programs([PASSING_TEST, "assert 1 + 1 == 3", "raise ValueError('boom')", "def broken(:"],
                           timeout_s=2, memory_mb=512, workers=2)
    assert [r.status for r in results] == ["passed", "failed", "failed", "failed"]
    assert "AssertionError" in results[1].detail
    assert "boom" in results[2].detail
    assert "invalid syntax" in results[3].detail or "SyntaxError" in results[3].detail


@pytest.mark.parametrize(
    "attack",
    [
        "import sys\nsys.exit(0)\nassert False",
        "import os\nos._exit(0)\nassert False",
        "raise SystemExit(0)",
        "raise KeyboardInterrupt",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        # kill the parent (the trusted monitor) and then the whole process group
        "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\nexcept OSError:\n    pass\n"
        "try:\n    os.killpg(0, signal.SIGKILL)\nexcept OSError:\n    pass\nassert False",
        # close / forge on stdout and stderr
        "import os, sys\nprint('passed')\nsys.stdout.write('{\"status\": \"passed\"}\\n')\nos.write(1, b'passed\\n')\n"
        "os.close(1)\nos.close(2)\nassert False",
        # patch builtins and the exit path the runner uses
        "import builtins, os, sys\nbuiltins.BaseException = int\nbuiltins.Exception = int\nos._exit = lambda c: None\n"
        "sys.exit = lambda *a: None\nassert False",
        # fork: the parent leaves "successfully", the child lingers
        "import os, time\nif os.fork() == 0:\n    time.sleep(30)\nos._exit(0)",
        # a thread that outlives the program and tries to exit 0 after the assertion fails
        "import threading, os, time\nthreading.Thread(target=lambda: (time.sleep(0.2), os._exit(0))).start()\n"
        "assert False",
        # write guessed tokens on every inherited fd
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'\\x00' * 16)\n    except OSError:\n        pass\n"
        "os._exit(0)",
    ],
    ids=["sys.exit", "os._exit", "SystemExit", "KeyboardInterrupt", "self-SIGKILL", "kill-parent",
         "stdout-forgery", "patch-builtins", "fork-and-exit", "thread-outlives", "fd-forgery"],
)
def test_attacks_never_pass(attack):
    result = run_one(attack)
    assert not result.passed, result


def test_infinite_loop_and_sleep_time_out_without_blocking_other_samples():
    started = time.perf_counter()
    results = run_programs(["while True:\n    pass", "import time\ntime.sleep(60)", PASSING_TEST, PASSING_TEST],
                           timeout_s=1.5, memory_mb=512, workers=2)
    assert [r.status for r in results] == ["timed out", "timed out", "passed", "passed"]
    assert time.perf_counter() - started < 10


def test_memory_flood_is_contained():
    result = run_one("x = bytearray(4 * 1024 ** 3)\nassert len(x) > 0", memory_mb=256)
    assert result.status == "failed" and "MemoryError" in result.detail


def test_disk_flood_is_contained(tmp_path):
    before = os.statvfs("/tmp").f_bavail
    program = ("import os, tempfile\nfor d in ('.', '/tmp', '/var/tmp', tempfile.gettempdir()):\n"
               "    for i in range(200):\n"
               "        try:\n"
               "            with open(os.path.join(d, f'flood{i}'), 'wb') as f:\n"
               "                f.write(b'x' * (8 << 20))\n"
               "        except OSError:\n"
               "            break\n"
               "assert False")
    result = run_one(program, file_mb=8)
    assert not result.passed
    lost_bytes = (before - os.statvfs("/tmp").f_bavail) * os.statvfs("/tmp").f_frsize
    assert lost_bytes < 64 << 20  # nothing the flood wrote survives the sample
    assert not list(Path("/tmp").glob("flood*"))


def test_fork_bomb_is_contained_and_leaves_no_process():
    program = "import os\nfor _ in range(12):\n    try:\n        os.fork()\n    except OSError:\n        pass\n" \
              "import time\ntime.sleep(30)"
    result = run_one(program, timeout_s=1.5, max_procs=64)
    assert result.status == "timed out"
    time.sleep(0.3)
    ps = subprocess.run(["ps", "-eo", "uid=,args="], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if line.split()[0] == "65534"], ps


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "sk-very-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret")
    program = ("import os, glob\nassert 'WANDB_API_KEY' not in os.environ and 'HF_TOKEN' not in os.environ\n"
               "blob = b''\nfor path in glob.glob('/proc/*/environ'):\n    try:\n"
               "        blob += open(path, 'rb').read()\n    except OSError:\n        pass\n"
               "assert b'very-secret' not in blob and b'hf_very_secret' not in blob, 'secret leaked'\n")
    result = run_one(program)
    assert result.passed, result  # the program itself asserts it found no secret anywhere it could look
    leak = run_one("import os\nassert os.environ.get('WANDB_API_KEY') == 'sk-very-secret'")
    assert not leak.passed


def test_socket_to_a_local_listener_is_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        server.settimeout(3)
        with contextlib.suppress(OSError):
            accepted.append(server.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hi')\n"
    result = run_one(program)
    thread.join()
    server.close()
    assert not result.passed
    assert not accepted, "the sandboxed program reached a listener on the host"


def test_each_program_can_have_its_own_time_limit():
    sleeper = "import time\ntime.sleep(0.6)\n"
    results = run_programs([sleeper, sleeper, "while True:\n    pass"], timeout_s=[0.3, 3.0, 0.4], memory_mb=512,
                           workers=3)
    assert [r.status for r in results] == ["timed out", "passed", "timed out"]
    assert results[0].detail == "exceeded 0.3 s" and results[2].detail == "exceeded 0.4 s"
    assert 0.5 < results[1].elapsed_s < 3.0
    with pytest.raises(ValueError, match="timeout_s has 1 limits for 2 programs"):
        run_programs(["pass", "pass"], timeout_s=[1.0], memory_mb=512)
    for bad in ([1.0, 0.0], [1.0, float("nan")], [float("inf"), 1.0]):
        with pytest.raises(ValueError, match="eval.timeout_s"):
            run_programs(["pass", "pass"], timeout_s=bad, memory_mb=512)


def test_results_keep_program_order_under_parallel_workers():
    programs = [f"import time\ntime.sleep({0.05 * (i % 3)})\nassert {i} % 2 == 0" for i in range(12)]
    results = run_programs(programs, timeout_s=2, memory_mb=512, workers=3)
    assert [r.passed for r in results] == [i % 2 == 0 for i in range(12)]


def test_bad_limits_name_the_config_field():
    with pytest.raises(ValueError, match="eval.timeout_s"):
        run_programs(["pass"], timeout_s=0, memory_mb=512)


@pytest.mark.parametrize(
    ("program", "status"),
    [
        (PASSING_TEST, "passed"),
        ("import sys\nsys.exit(0)", "failed"),
        ("import os\nos._exit(0)", "failed"),
        ("import os, time\nif os.fork() == 0:\n    time.sleep(30)\nos._exit(0)", "failed"),
        ("import socket\nsocket.socket()", "failed"),
        ("while True:\n    pass", "timed out"),
    ],
    ids=["honest", "sys.exit", "os._exit", "fork", "socket", "loop"],
)
def test_fallback_isolation_without_namespaces_still_contains(program, status):
    result = run_programs([program], timeout_s=1.5, memory_mb=512, workers=1, namespaces=False,
                          allow_unsafe=True)[0]
    assert result.status == status, result
    if program.startswith("import socket"):
        assert "network access is disabled" in result.detail


def test_without_real_isolation_nothing_runs_unless_the_user_opts_in(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(UnsafeSandboxError, match=r"eval.allow_unsafe_sandbox=false.*Missing: namespaces"):
        run_programs([f"open({str(marker)!r}, 'w')"], namespaces=False)
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the nobody user and mount namespaces need root")
def test_program_cannot_write_outside_its_private_tmp_or_see_the_home():
    home = Path.home()
    # The only thing of the home it may see is the path to the interpreter (bound back read-only).
    prefix = Path(sys.base_prefix)
    allowed = {prefix.relative_to(home).parts[0]} if prefix.is_relative_to(home) else set()
    program = (f"import os\nfor path in ({str(home / 'pwned')!r}, '/etc/pwned', '/usr/pwned'):\n"
               "    try:\n        open(path, 'w').write('x')\n        raise SystemExit('wrote ' + path)\n"
               "    except OSError:  # permission denied, or a read-only file system\n        pass\n"
               f"try:\n    seen = set(os.listdir({str(home)!r}))\nexcept PermissionError:\n    seen = set()\n"
               f"assert seen <= {allowed!r}, seen\n"
               "open('/tmp/ok', 'w').write('private tmp is writable')\n")
    result = run_one(program)
    assert result.passed, result
    assert not (home / "pwned").exists() and not Path("/etc/pwned").exists() and not Path("/usr/pwned").exists()
