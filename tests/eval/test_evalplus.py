"""HumanEval+ / MBPP+ rows in EvalPlus's schema: loading, differential tests, calibrated time limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixmerge.eval.evalplus import EvalPlusDataError, load_evalplus, resolve_path, time_limit_s
from mixmerge.eval.problems import build_program
from mixmerge.eval.sandbox import run_programs

FIXTURES = Path(__file__).parents[1] / "fixtures" / "evalplus"
HE_PLUS = FIXTURES / "HumanEvalPlus-mini.jsonl"
MBPP_PLUS = FIXTURES / "MbppPlus-mini.jsonl"


def _by_id(problems):
    return {p.base.task_id: p for p in problems}


def _verdicts(problem, solutions, timeout_s=5.0):
    return [r.passed for r in run_programs([build_program(problem, s) for s in solutions], timeout_s=timeout_s)]


def test_rows_load_as_base_and_plus_problems():
    he = _by_id(load_evalplus(HE_PLUS, "humaneval"))
    assert sorted(he) == ["HumanEval/0", "HumanEval/2", "HumanEval/slow"]
    mbpp = _by_id(load_evalplus(MBPP_PLUS, "mbpp"))
    assert mbpp["Mbpp/3"].base.entry_point == "is_not_prime" and mbpp["Mbpp/3"].plus.benchmark == "mbpp"


def test_canonical_solutions_pass_and_a_subtly_wrong_one_fails_only_the_plus_inputs():
    problem = _by_id(load_evalplus(HE_PLUS, "humaneval"))["HumanEval/0"]
    canonical = problem.base.canonical_solution
    # "<=" instead of "<": right on every original input, wrong when two numbers are exactly threshold apart
    off_by_one = canonical.replace("distance < threshold", "distance <= threshold")
    assert off_by_one != canonical
    assert _verdicts(problem.base, [canonical, off_by_one]) == [True, True]
    assert _verdicts(problem.plus, [canonical, off_by_one]) == [True, False]


def test_floats_compare_within_atol_and_mbpp_set_outputs_as_sets():
    he = _by_id(load_evalplus(HE_PLUS, "humaneval"))["HumanEval/2"]
    assert _verdicts(he.plus, ["    return number - int(number) + 1e-9\n",
                               "    return round(number - int(number), 2)\n"]) == [True, False]
    mbpp = _by_id(load_evalplus(MBPP_PLUS, "mbpp"))["Mbpp/2"]
    reordered = "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"
    assert _verdicts(mbpp.plus, [mbpp.plus.canonical_solution, reordered]) == [True, True]


def test_a_returned_object_that_equals_everything_fails():
    problem = _by_id(load_evalplus(HE_PLUS, "humaneval"))["HumanEval/0"]
    forged = ("    class Yes:\n        def __eq__(self, other):\n            return True\n"
              "        __hash__ = object.__hash__\n    return Yes()\n")
    assert _verdicts(problem.plus, [forged]) == [False]


def test_a_slow_but_correct_solution_passes_under_the_calibrated_limit():
    problem = _by_id(load_evalplus(HE_PLUS, "humaneval"))["HumanEval/slow"].plus
    canonical = problem.canonical_solution
    [measured] = run_programs([build_program(problem, canonical)], timeout_s=30.0)
    assert measured.passed
    slow = "    for _ in range(3):\n        " + canonical.replace("\n    ", "\n        ").strip() + "\n"
    slow = slow.replace("        return total\n", "    return total\n")
    # about 2.5x the ground truth's program: a fixed limit tuned on a faster machine fails it ...
    assert _verdicts(problem, [slow], timeout_s=1.2 * measured.elapsed_s) == [False]
    # ... EvalPlus's max(1 s, 4 x ground truth) does not
    assert _verdicts(problem, [slow], timeout_s=time_limit_s(measured.elapsed_s)) == [True]


def test_malformed_files_name_the_file_line_and_field(tmp_path, monkeypatch):
    rows = HE_PLUS.read_text().splitlines()
    bad = json.loads(rows[1])
    del bad["plus_input"]
    path = tmp_path / "he.jsonl"
    path.write_text("\n".join([rows[0], json.dumps(bad)]) + "\n")
    with pytest.raises(EvalPlusDataError, match=r"he.jsonl:2: field 'plus_input' must be list, got missing"):
        load_evalplus(path, "humaneval")
    path.write_text(rows[0] + "\n{not json\n")
    with pytest.raises(EvalPlusDataError, match=r"he.jsonl:2: not JSON"):
        load_evalplus(path, "humaneval")
    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    with pytest.raises(FileNotFoundError, match=r"eval.humaneval_plus.path.*HUMANEVAL_OVERRIDE_PATH"):
        resolve_path("humaneval", None)
    monkeypatch.setenv("HUMANEVAL_OVERRIDE_PATH", str(HE_PLUS))
    assert resolve_path("humaneval", None) == HE_PLUS
    assert time_limit_s(0.01) == 1.0 and time_limit_s(2.0) == 8.0
