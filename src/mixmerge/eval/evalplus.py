"""HumanEval+ and MBPP+ (EvalPlus, Liu et al. NeurIPS 2023) from local files, as differential tests.

EvalPlus ships its data as JSONL (optionally gzipped) outside PyPI; users download it once. The path comes
from ``eval.<benchmark>_plus.path`` or, following EvalPlus's own convention, the ``HUMANEVAL_OVERRIDE_PATH``
/ ``MBPP_OVERRIDE_PATH`` environment variables. Each row carries the ground truth and its test inputs
(``base_input``: the original benchmark's, ``plus_input``: EvalPlus's extra ones); a solution is correct
when it returns what the ground truth returns on every input (floats within ``atol``). Both are run in
one sandboxed program, so no expected outputs need to be shipped back from a sandbox.

Per-problem time limits follow EvalPlus: ``max(floor, factor x the ground truth's measured time)``
(EvalPlus's defaults: factor 4, floor 1 s), so a slow machine does not turn correct programs into
failures (https://github.com/evalplus/evalplus, evaluate.py).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mixmerge.eval.problems import CodeProblem

OVERRIDE_ENV = {"humaneval": "HUMANEVAL_OVERRIDE_PATH", "mbpp": "MBPP_OVERRIDE_PATH"}
REQUIRED = {"task_id": str, "prompt": str, "entry_point": str, "canonical_solution": str,
            "base_input": list, "plus_input": list}
DEFAULT_FACTOR = 4.0
DEFAULT_FLOOR_S = 1.0
# EvalPlus compares these MBPP+ outputs as sets and these only as "not None" (evalplus/evaluate.py).
MBPP_SET_EQUAL = frozenset({"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                            "larg_nnum", "intersection_array", "find_dissimilar", "Diff"})
MBPP_NOT_NONE = frozenset({"check_str", "text_match_three", "text_starta_endb"})

# The trusted half of every program: the ground truth runs in its own namespace, outputs are compared by
# exact builtin type (a returned object of the completion's own class, whatever its __eq__, fails).
_HARNESS = '''
def __mm_same(out, exp, atol):
    if type(out) is not type(exp):
        return False
    if isinstance(exp, float):
        return (out != out and exp != exp) or abs(out - exp) <= atol
    if isinstance(exp, (list, tuple)):
        return len(out) == len(exp) and all(__mm_same(o, e, atol) for o, e in zip(out, exp))
    if isinstance(exp, dict):
        return out.keys() == exp.keys() and all(__mm_same(out[k], exp[k], atol) for k in exp)
    if isinstance(exp, (set, frozenset)):
        return all(type(o) in (int, str, float, bool, tuple, type(None)) for o in out) and out == exp
    return type(exp) in (int, str, bool, bytes, complex, type(None)) and out == exp


def __mm_check(candidate, ref_source, entry_point, inputs, atol, mode):
    import copy
    ref_ns = {}
    exec(ref_source, ref_ns)
    reference = ref_ns[entry_point]
    for args in inputs:
        expected = reference(*copy.deepcopy(args))
        got = candidate(*copy.deepcopy(args))
        if mode == "set":
            assert type(got) in (list, tuple, set, frozenset) and __mm_same(set(got), set(expected), atol)
        elif mode == "not_none":
            assert (got is None) == (expected is None)
        else:
            assert __mm_same(got, expected, atol if atol or not isinstance(expected, float) else 1e-6)
'''


class EvalPlusDataError(ValueError):
    """A malformed EvalPlus file: the message names the file, the line and the field."""


@dataclass(frozen=True)
class PlusProblem:
    """One EvalPlus problem: its base test (original inputs) and plus test (original + EvalPlus's)."""

    base: CodeProblem
    plus: CodeProblem


def resolve_path(benchmark: str, configured: str | None) -> Path:
    """The data file: the configured path, else EvalPlus's override variable; an error says how to get it."""
    env = OVERRIDE_ENV[benchmark]
    raw = configured or os.environ.get(env)
    if not raw:
        raise FileNotFoundError(f"eval.{benchmark}_plus.path is not set and ${env} is empty: download "
                                f"EvalPlus's {'HumanEvalPlus' if benchmark == 'humaneval' else 'MbppPlus'}"
                                f".jsonl.gz once and set eval.{benchmark}_plus.path=FILE")
    path = Path(raw).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"eval.{benchmark}_plus.path={raw!r} is not a file")
    return path


def _rows(path: Path):
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalPlusDataError(f"{path}:{number}: not JSON ({exc.msg})") from None
        for field, kind in REQUIRED.items():
            if not isinstance(row.get(field), kind):
                got = "missing" if field not in row else type(row[field]).__name__
                raise EvalPlusDataError(f"{path}:{number}: field {field!r} must be {kind.__name__}, got {got}")
        yield row


def _test(row: Mapping, benchmark: str, inputs: list) -> str:
    reference = row["canonical_solution"] if benchmark == "mbpp" else row["prompt"] + row["canonical_solution"]
    name = row["entry_point"]
    mode = "set" if name in MBPP_SET_EQUAL else "not_none" if name in MBPP_NOT_NONE else "equal"
    if benchmark != "mbpp":
        mode = "equal"
    inputs_json = json.dumps(inputs)
    return (f"{_HARNESS}\n__mm_check({name}, {reference!r}, {name!r}, __import__('json').loads({inputs_json!r}), "
            f"{float(row.get('atol') or 0)!r}, {mode!r})\n")


def load_evalplus(path: Path, benchmark: str) -> list[PlusProblem]:
    """Every row of an EvalPlus file as a base and a plus test problem (benchmark: humaneval | mbpp)."""
    if benchmark not in OVERRIDE_ENV:
        raise ValueError(f"EvalPlus benchmark {benchmark!r} is not one of {sorted(OVERRIDE_ENV)}")
    problems, seen = [], set()
    for row in _rows(Path(path)):
        if row["task_id"] in seen:
            raise EvalPlusDataError(f"{path}: task_id {row['task_id']!r} appears twice")
        seen.add(row["task_id"])
        prompt = row["prompt"]
        instruction = (f"Complete the following Python function.\n\n```python\n{prompt}```" if benchmark == "humaneval"
                       else prompt.strip().strip('"').strip())
        common = dict(task_id=row["task_id"], benchmark=benchmark, prompt=prompt, instruction=instruction,
                      entry_point=row["entry_point"], canonical_solution=row["canonical_solution"])
        base = CodeProblem(test=_test(row, benchmark, row["base_input"]), **common)
        plus = CodeProblem(test=_test(row, benchmark, row["base_input"] + row["plus_input"]), **common)
        problems.append(PlusProblem(base, plus))
    if not problems:
        raise EvalPlusDataError(f"{path}: no problems")
    return problems


def time_limit_s(ground_truth_s: float, *, factor: float = DEFAULT_FACTOR, floor_s: float = DEFAULT_FLOOR_S) -> float:
    """EvalPlus's per-problem limit: ``max(floor, factor x ground-truth time)``."""
    if factor <= 0 or floor_s <= 0:
        raise ValueError(f"time limits need a positive factor and floor, got {factor} and {floor_s}")
    return max(floor_s, factor * ground_truth_s)
