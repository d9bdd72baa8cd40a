import pytest

from mixmerge.eval.problems import (
    build_program,
    extract_solution,
    load_humaneval,
    load_mbpp,
    mbpp_problem,
    seeded_subset,
)
from mixmerge.eval.sandbox import run_programs


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


def test_humaneval_has_164_problems_with_tests(humaneval):
    assert len(humaneval) == 164
    assert humaneval[0].task_id == "HumanEval/0" and humaneval[0].entry_point == "has_close_elements"
    assert all(p.test.rstrip().endswith(f"check({p.entry_point})") for p in humaneval)


def test_every_canonical_humaneval_solution_passes(humaneval):
    results = run_programs([build_program(p, p.canonical_solution) for p in humaneval], timeout_s=10,
                           memory_mb=1024)
    failed = [(p.task_id, r.describe()) for p, r in zip(humaneval, results, strict=False) if not r.passed]
    assert not failed


def _wrong(body: str) -> str:
    """Break a canonical solution: return something else than it would."""
    return "    return None\n" if "return" in body else "    raise NotImplementedError\n"


def test_wrong_humaneval_solutions_fail(humaneval):
    problems = humaneval[::4]  # 41 problems
    wrong = [_wrong(p.canonical_solution) for p in problems]
    # plus off-by-one style bugs on a few known problems
    by_id = {p.task_id: p for p in humaneval}
    extra = {
        "HumanEval/2": "    return number // 1.0\n",  # truncate_number: returns the integer part
        "HumanEval/4": "    mean = sum(numbers) / len(numbers)\n    return max(abs(x - mean) for x in numbers)\n",
        "HumanEval/13": "    return a * b\n",  # greatest_common_divisor
        "HumanEval/23": "    return len(string) + 1\n",  # strlen
    }
    problems = problems + [by_id[k] for k in extra]
    wrong = wrong + list(extra.values())
    results = run_programs([build_program(p, w) for p, w in zip(problems, wrong, strict=False)], timeout_s=5, memory_mb=1024)
    passed = [p.task_id for p, r in zip(problems, results, strict=False) if r.passed]
    assert not passed


def test_mbpp_full_fixture_canonical_pass_and_wrong_fail(fixtures_dir):
    problems = load_mbpp(str(fixtures_dir / "mbpp_full_sample.jsonl"))
    assert [p.task_id for p in problems] == ["MBPP/2", "MBPP/3", "MBPP/4", "MBPP/17"]
    assert problems[3].entry_point == "square_perimeter"
    assert problems[3].prompt.startswith('"""\nWrite a function that returns the perimeter')
    assert "assert square_perimeter(10)==40" in problems[3].prompt
    good = run_programs([build_program(p, p.canonical_solution) for p in problems], timeout_s=5, memory_mb=512)
    assert all(r.passed for r in good), good
    wrong = ["def similar_elements(a, b):\n    return tuple(a)", "def is_not_prime(n):\n    return n % 2 == 0",
             "def heap_queue_largest(nums, n):\n    return sorted(nums)[:n]", "def square_perimeter(a):\n    return a * a"]
    bad = run_programs([build_program(p, w) for p, w in zip(problems, wrong, strict=False)], timeout_s=5, memory_mb=512)
    assert not any(r.passed for r in bad)


def test_mbpp_sanitized_schema_uses_prompt_and_test_imports(fixtures_dir):
    (problem,) = load_mbpp(str(fixtures_dir / "mbpp_sanitized_sample.jsonl"))
    assert problem.setup == "import math"
    assert problem.instruction.startswith("Write a function that returns the perimeter of a square")
    program = build_program(problem, problem.canonical_solution)
    assert program.startswith("import math\n")
    assert run_programs([program], timeout_s=5, memory_mb=512)[0].passed


def test_mbpp_row_without_tests_is_rejected():
    with pytest.raises(ValueError, match="test_list"):
        mbpp_problem({"task_id": 1, "text": "x", "code": "", "test_list": []})


def test_chat_solution_replaces_the_prompt_stub(humaneval):
    problem = humaneval[0]
    solution = problem.canonical_solution
    chat_code = ("from typing import List\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                 + solution)
    assert run_programs([build_program(problem, chat_code, "chat")], timeout_s=5, memory_mb=512)[0].passed


def test_seeded_subset_is_fixed_sorted_and_seed_dependent():
    items = list(range(100))
    a = seeded_subset(items, 10, seed=0)
    assert a == seeded_subset(items, 10, seed=0) and a == sorted(a) and len(a) == 10
    assert a != seeded_subset(items, 10, seed=1)
    assert seeded_subset(items, None, seed=0) == items and seeded_subset(items, 500, seed=0) == items
    assert set(seeded_subset(items, 20, seed=0)) >= set()  # any size works
    with pytest.raises(ValueError):
        seeded_subset(items, 0, seed=0)


def test_markdown_answer_to_a_completion_prompt_is_sanitized_and_can_pass(humaneval):
    problem = humaneval[0]
    answer = ("```python\nfrom typing import List\n\ndef has_close_elements(numbers: List[float], threshold: float)"
              " -> bool:\n" + problem.canonical_solution + "```\nprint('done')")
    solution = extract_solution(problem, answer, "completion")
    assert "```" not in solution and solution.startswith("from typing import List")
    assert run_programs([build_program(problem, solution, "completion")], timeout_s=5, memory_mb=512)[0].passed
    plain = extract_solution(problem, "    return False\n\ndef other():\n    pass\n", "completion")
    assert plain == "    return False"
