"""Forged verdicts and isolation leaks (issue 12): each test performs the attack for real."""

import subprocess
import time
from pathlib import Path

import pytest

from mixmerge.eval.sandbox import run_programs

FIND_AND_FORGE = """
import os
def forge(frames):
    for f in frames:
        loc = f.f_locals
        if 'token' in loc and 'wfd' in loc:
            os.write(loc['wfd'], loc['token'])
            os._exit(0)
"""
WALK_UP = "\nfs = []\nwhile f is not None:\n    fs.append(f)\n    f = f.f_back\nforge(fs)\n"
WRONG = "\nassert 1 + 1 == 3, 'a wrong completion'\n"


def run_one(program: str, **kw):
    kw.setdefault("timeout_s", 3.0)
    kw.setdefault("memory_mb", 512)
    return run_programs([program], workers=1, **kw)[0]


def humaneval_program(completion: str, body: str = "    return a + b\n") -> str:
    """A HumanEval-shaped program: prompt + completion, then the test's check() and its call."""
    return (f"def add(a, b):\n{body}\n{completion}\n\n"
            "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n\n"
            "check(add)\n")


FORGERIES = {
    "sys._getframe": "import sys\nf = sys._getframe()" + WALK_UP,
    "inspect.stack": "import inspect\nforge([fi.frame for fi in inspect.stack()])\n",
    "traceback": "try:\n    raise ValueError\nexcept ValueError as e:\n    f = e.__traceback__.tb_frame" + WALK_UP,
    "generator": ("def g():\n    f = gen.gi_frame" + WALK_UP.replace("\n", "\n    ") + "\n    yield\n"
                  "gen = g()\nnext(gen)\n"),
    "sys._current_frames": "import sys\nf = list(sys._current_frames().values())[0]" + WALK_UP,
    "ctypes-import": ("import ctypes\nctypes.pythonapi.PyEval_GetFrame.restype = ctypes.py_object\n"
                      "f = ctypes.pythonapi.PyEval_GetFrame()" + WALK_UP),
    "ctypes-preloaded": ("import sys\nc = [m for m in sys.modules.values() if hasattr(m, 'pythonapi')][0]\n"
                         "c.pythonapi.PyEval_GetFrame.restype = c.py_object\n"
                         "f = c.pythonapi.PyEval_GetFrame()" + WALK_UP),
}


@pytest.mark.parametrize("attack", list(FORGERIES.values()), ids=list(FORGERIES))
def test_stack_walking_forgery_of_the_pass_token_fails(attack):
    result = run_one(FIND_AND_FORGE + attack + WRONG)
    assert not result.passed, result


def test_the_collector_cannot_be_searched_for_the_runners_objects():
    program = FIND_AND_FORGE + "import gc\nobjects = gc.get_objects()\nreferrers = gc.get_referrers(forge)\n"
    result = run_one(program)
    assert result.status == "failed" and "gc.get_objects is refused" in result.detail, result


def test_a_program_can_read_neither_its_own_memory_nor_its_monitors():
    program = ("import os\nos.symlink('/proc/self/mem', 'm')\n"
               "for path in ('/proc/self/mem', 'm', f'/proc/{os.getppid()}/mem', '/proc/1/mem'):\n"
               "    try:\n        open(path, 'rb')\n    except OSError:\n        continue\n"
               "    raise SystemExit('opened ' + path)\n")
    result = run_one(program)
    assert result.passed, result  # the program asserts every attempt was refused


@pytest.mark.parametrize(
    "completion",
    [
        # an object that equals everything
        "    class Always:\n        def __eq__(self, other):\n            return True\n    return Always()\n",
        # an int subclass that equals everything, hidden in a list
        "    class I(int):\n        def __eq__(self, other):\n            return True\n        __hash__ = int.__hash__\n"
        "    return [I(0)][0]\n",
        # a metaclass that claims to be a builtin type
        "    class Meta(type):\n        __flags__ = 0\n        __eq__ = lambda s, o: True\n        __hash__ = lambda s: hash(int)\n"
        "    class A(metaclass=Meta):\n        __eq__ = lambda s, o: True\n    return A()\n",
    ],
    ids=["always-equal", "int-subclass", "metaclass-lies"],
)
def test_a_result_whose_type_the_completion_defined_fails(completion):
    result = run_one(humaneval_program("", completion))
    assert result.status == "failed" and "defined by the program" in result.detail, result


def test_swapping_the_candidate_with_a_trace_function_fails():
    completion = ("import sys\ndef good(a, b):\n    return a + b\n"
                  "def tracer(frame, event, arg):\n"
                  "    if event == 'call' and frame.f_code.co_name == 'check':\n"
                  "        frame.f_locals['candidate'] = good\n    return None\n"
                  "sys.settrace(tracer)\n")
    result = run_one(humaneval_program(completion, "    return 0\n"))
    assert not result.passed, result
    profile = completion.replace("sys.settrace", "sys.setprofile")
    assert not run_one(humaneval_program(profile, "    return 0\n")).passed


def test_replacing_check_before_it_is_called_fails():
    completion = ("import signal\ndef swap(*_):\n    g = globals()\n"
                  "    if 'check' in g:\n        g['check'] = lambda c: None\n"
                  "signal.signal(signal.SIGALRM, swap)\nsignal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)\n")
    body = "    return 0\n"
    # statements between the test's def and its call give the timer time to fire
    padding = "\n".join(f"PAD{i} = [0] * 10000" for i in range(300))
    program = humaneval_program(completion, body).replace("\ncheck(add)", padding + "\ncheck(add)")
    assert not run_one(program).passed


def test_tampering_with_the_runners_guard_fails():
    completion = ("import sys\nrunner = sys.modules['_sandbox_runner']\n"
                  "runner.verify_plain.__defaults__ = (frozenset(),) * 9\n")
    always = "    class Always:\n        def __eq__(self, other):\n            return True\n    return Always()\n"
    result = run_one(humaneval_program(completion, always))
    assert result.status == "failed" and "__defaults__ is refused" in result.detail, result
    swap_code = "def add(a, b):\n    return 0\ncheck.__code__ = (lambda candidate: None).__code__\n"
    program = humaneval_program("", "    return 0\n").replace("\ncheck(add)", "\n" + swap_code + "check(add)")
    assert not run_one(program).passed


def test_honest_programs_that_ask_for_their_callers_frame_still_pass():
    """namedtuple, TypeVar, functional Enum/NamedTuple, logging and dataclasses read a caller's frame or
    set a function's defaults; inside the sandbox they get a stand-in frame showing only the program."""
    nested = "    return a + b if a < 10 else {'k': [(1, 2.5), {3}, None]}\n"
    setup = ("import logging\nfrom collections import namedtuple\nfrom dataclasses import dataclass\n"
             "from enum import Enum\nfrom typing import NamedTuple, TypeVar\n"
             "P = namedtuple('P', 'x y')\nT = TypeVar('T')\nC = Enum('C', 'RED GREEN')\n"
             "Q = NamedTuple('Q', [('x', int)])\n@dataclass\nclass D:\n    x: int = 1\n"
             "logging.getLogger('completion').warning('logged %s', D().x)\n"
             "import sys\nassert sys._getframe().f_back is None and sys._getframe().f_globals['P'] is P\n")
    result = run_one(humaneval_program(setup, nested))
    assert result.passed, result


def test_proc_shows_only_the_samples_own_processes():
    program = ("import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
               "cmd = b''.join(open(f'/proc/{p}/cmdline', 'rb').read() for p in pids)\n"
               "assert len(pids) <= 3, pids\nassert b'pytest' not in cmd, cmd\n")
    result = run_one(program)
    assert result.passed, result


def _shm_keys() -> set[str]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {line.split()[0] for line in lines}


def test_samples_have_their_own_ipc_namespace():
    """A segment of the host is invisible to a sample (and one a sample made would die with its job)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    shmid = libc.shmget(0x6D6D0001, 4096, 0o1600)
    assert shmid >= 0
    try:
        program = "segments = open('/proc/sysvipc/shm').read().splitlines()[1:]\nassert not segments, segments\n"
        result = run_one(program)
        assert result.passed, result
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID


def test_sysv_shared_memory_does_not_outlive_the_sample():
    key = 0x6D6D6D6D
    program = (f"import ctypes\nlibc = ctypes.CDLL(None)\nassert libc.shmget({key}, 4096, 0o1666) >= 0\n"
               "import time\ntime.sleep(0.1)\n")
    before = _shm_keys()
    result = run_one(program)
    assert not result.passed, result
    assert str(key) not in _shm_keys() - before


def test_memory_is_limited_for_the_whole_job_not_per_process():
    """Six processes of 150 MB each under memory_mb=256: each fits its own limit, together they must not
    (the issue's six of 600 MB under 1024 took 3.7 GB from the host; scaled down to stay fast)."""
    program = ("import os\nr, w = os.pipe()\nfor _ in range(5):\n    if os.fork() == 0:\n"
               "        block = b'x' * (150 << 20)\n        os.write(w, b'1')\n        import time\n"
               "        time.sleep(1)\n        os._exit(0)\n"
               "block = b'x' * (150 << 20)\nos.close(w)\ngot = b''\nwhile chunk := os.read(r, 8):\n    got += chunk\n"
               "assert len(got) == 5, 'not every process got its 150 MB'\n")
    result = run_one(program, memory_mb=256, timeout_s=12)
    assert result.status == "failed", result  # killed (cgroup OOM) or stopped by the monitor's total


def test_process_count_is_limited_for_the_whole_job():
    program = ("import os, time\nn = 0\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n"
               "            time.sleep(5)\n            os._exit(0)\n        n += 1\n    except OSError:\n        break\n"
               "assert n >= 100, n\n")
    result = run_one(program, max_procs=32, timeout_s=4)
    assert not result.passed, result
    time.sleep(0.2)
    ps = subprocess.run(["ps", "-eo", "uid=,etimes=,args="], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if line.split()[0] == "65534" and int(line.split()[1]) > 4], ps
