"""Sandbox limits are checked on canonical solutions before any sample runs: limits that fail even those
stop the evaluation naming the field, the canonical runtime and the fix, instead of a silent pass@1 = 0."""

import json
import re
from dataclasses import replace

import pytest

from mixmerge.eval import limits, score, suite
from mixmerge.eval.limits import LimitsTooTightError, check_limits
from mixmerge.eval.problems import load_humaneval


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


def test_sane_limits_pass_and_report_the_canonical_runtime(humaneval):
    slowest = check_limits(humaneval[:5], {"timeout_s": 5.0, "memory_mb": 1024, "workers": 2})
    assert slowest is not None and 0.0 < slowest < 5.0


def test_a_timeout_no_canonical_solution_meets_is_refused(humaneval):
    with pytest.raises(LimitsTooTightError) as err:
        check_limits(humaneval[:3], {"timeout_s": 0.001, "memory_mb": 1024, "workers": 2})
    message = str(err.value)
    assert message.startswith("eval.timeout_s: under eval.timeout_s=0.001 and eval.memory_mb=1024")
    assert "canonical solution of HumanEval/" in message and "3 of 3 canonical solutions" in message
    runtime = float(re.search(r"passes in ([0-9.]+) s", message).group(1))
    assert 0.0 < runtime < 30.0 and "e.g. eval.timeout_s=" in message


def test_a_memory_cap_below_what_python_needs_is_refused(humaneval):
    with pytest.raises(LimitsTooTightError, match=r"^eval\.memory_mb: .* e\.g\. eval\.memory_mb=1024\.$"):
        check_limits(humaneval[:3], {"timeout_s": 5.0, "memory_mb": 8, "workers": 2})


def test_a_canonical_solution_broken_in_itself_only_warns(humaneval, caplog):
    broken = replace(humaneval[0], canonical_solution="    return None\n")
    assert check_limits([broken], {"timeout_s": 5.0, "memory_mb": 1024, "workers": 1}) is None
    assert "fails even under generous limits" in caplog.text and broken.task_id in caplog.text


def test_only_a_few_distinct_problems_are_checked(humaneval, monkeypatch):
    calls = []
    real = limits.run_programs
    monkeypatch.setattr(limits, "run_programs", lambda programs, **kw: calls.append(len(programs)) or real(programs, **kw))
    check_limits([humaneval[0]] * 4 + humaneval[1:10], {"timeout_s": 5.0, "workers": 2})
    assert calls == [limits.CALIBRATION_PROBLEMS]


def test_score_refuses_tight_limits_before_running_any_sample(humaneval, tmp_path, monkeypatch):
    executed = []
    monkeypatch.setattr(score, "execute_solutions", lambda *a, **k: executed.append(a) or [])
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n"
                            for p in humaneval[:2]))
    with pytest.raises(LimitsTooTightError, match=r"eval\.timeout_s=0\.001"):
        score.run({"samples": str(path), "k": [1], "timeout_s": 0.001, "workers": 2}, tmp_path / "out")
    assert executed == [] and not (tmp_path / "out").exists()


def test_evaluation_refuses_tight_limits_before_generating_or_scoring(tmp_path, monkeypatch):
    generated = []
    monkeypatch.setattr(suite, "generate", lambda *a, **k: generated.append(a) or [])
    monkeypatch.setattr(suite, "heldout_nll_sums", lambda *a, **k: generated.append(a) or [(0.0, 1)])
    cfg = {"timeout_s": 0.001, "memory_mb": 1024, "workers": 2, "humaneval": {"enabled": True, "limit": 3},
           "codesum": {"enabled": False}}
    with pytest.raises(LimitsTooTightError, match=r"eval\.timeout_s"):
        suite.evaluate_model(None, None, eval_cfg=cfg, heldout={"codegen": []}, prompt_style="completion",
                             out_dir=tmp_path / "eval")
    assert generated == [] and not (tmp_path / "eval").exists()
