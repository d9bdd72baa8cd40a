"""HumanEval+ / MBPP+ evaluation: settings checked by field, measured per-problem limits, base and plus pass@1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixmerge.eval import evalplus_eval
from mixmerge.eval.evalplus import load_evalplus
from mixmerge.eval.evalplus_eval import (
    PlusSettings,
    check_evalplus,
    data_fingerprints,
    evaluate_evalplus,
    judge_solutions,
    measured_limits,
    plus_settings,
)
from mixmerge.eval.problems import build_program
from mixmerge.eval.sandbox import run_programs

FIXTURES = Path(__file__).parents[1] / "fixtures" / "evalplus"
HE_PLUS = FIXTURES / "HumanEvalPlus-mini.jsonl"
MBPP_PLUS = FIXTURES / "MbppPlus-mini.jsonl"
SANDBOX = {"memory_mb": 512, "workers": 2}

# A row in EvalPlus's schema whose ground truth takes a while on every input (0.2 s, twice per input: the
# harness runs the ground truth next to the candidate), standing in for a problem that is slow on this machine.
SLOW_ROW = {
    "task_id": "HumanEval/nap", "entry_point": "nap", "contract": "", "atol": 0,
    "prompt": "import time\n\n\ndef nap(x: int) -> int:\n    \"\"\" Return x, after a short rest.\n    >>> nap(2)\n"
              "    2\n    \"\"\"\n",
    "canonical_solution": "    time.sleep(0.2)\n    return x\n",
    "base_input": [[1]], "plus_input": [[-7]],
}


def _settings(path: Path, benchmark: str = "humaneval", **kw) -> PlusSettings:
    values = {"limit": None, "max_new_tokens": 8, "time_factor": 4.0, "time_floor_s": 1.0, **kw}
    return PlusSettings(section=f"{benchmark}_plus", benchmark=benchmark, path=path, **values)


def _section(path, **kw) -> dict:
    return {"enabled": True, "path": str(path), "limit": None, "max_new_tokens": 8, "time_factor": 4.0,
            "time_floor_s": 1.0, **kw}


def test_a_slow_but_correct_solution_fails_a_fixed_limit_and_passes_the_measured_one(tmp_path):
    path = tmp_path / "HumanEvalPlus-slow.jsonl"
    path.write_text(json.dumps(SLOW_ROW) + "\n")
    [problem] = load_evalplus(path, "humaneval")
    slower = "    time.sleep(0.3)\n    return x\n"  # correct, 1.5x slower than the ground truth
    # a fixed limit set on a faster machine (here 0.3 s, standing in for eval.timeout_s=3.0) fails it
    [fixed] = run_programs([build_program(problem.base, slower)], timeout_s=0.3, **SANDBOX)
    assert fixed.status == "timed out"
    # EvalPlus's max(floor, 4 x the ground truth measured here) lets it pass, base and plus
    limits = measured_limits([problem], settings=_settings(path, time_floor_s=0.05), eval_cfg=SANDBOX)
    [verdict] = judge_solutions([problem], [slower], limits=limits, eval_cfg=SANDBOX, style="completion")
    assert verdict.base.passed and verdict.plus_passed
    # one input, on which the harness's reference and the ground truth sleep 0.2 s each; plus: two inputs
    assert 4 * 0.4 <= verdict.base_limit_s < 4 * 0.4 + 4.0 and verdict.plus_limit_s >= 4 * 0.8
    # ... and a solution that never returns still times out, under that limit, not the generous one
    [hang] = judge_solutions([problem], ["    while True:\n        pass\n"], limits=limits, eval_cfg=SANDBOX,
                             style="completion")
    assert hang.base.status == "timed out" and hang.base.elapsed_s < hang.base_limit_s + 1.0 and hang.plus is None


def test_plus_runs_only_after_base_passes_and_catches_what_base_misses():
    problems = [p for p in load_evalplus(HE_PLUS, "humaneval") if p.base.task_id == "HumanEval/0"] * 3
    canonical = problems[0].base.canonical_solution
    off_by_one = canonical.replace("distance < threshold", "distance <= threshold")
    limits = measured_limits(problems, settings=_settings(HE_PLUS, time_floor_s=0.5), eval_cfg=SANDBOX)
    verdicts = judge_solutions(problems, [canonical, off_by_one, "    return None\n"], limits=limits,
                               eval_cfg=SANDBOX, style="completion")
    assert [(v.base.passed, v.plus_passed) for v in verdicts] == [(True, True), (True, False), (False, False)]
    assert verdicts[1].plus.status == "failed" and verdicts[2].plus is None
    assert all(v.base_limit_s >= 0.5 and v.plus_limit_s >= 0.5 for v in verdicts)


def test_settings_are_checked_naming_the_field(monkeypatch, tmp_path):
    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    monkeypatch.delenv("MBPP_OVERRIDE_PATH", raising=False)
    assert plus_settings({"humaneval_plus": {"enabled": False}, "mbpp_plus": None}) == []
    with pytest.raises(FileNotFoundError, match=r"eval\.humaneval_plus\.path is not set and \$HUMANEVAL_OVERRIDE"):
        check_evalplus({"humaneval_plus": {"enabled": True, "path": None}})
    with pytest.raises(FileNotFoundError, match=r"eval\.mbpp_plus\.path='/nope\.jsonl' is not a file"):
        check_evalplus({"mbpp_plus": {"enabled": True, "path": "/nope.jsonl"}})
    for field, value, message in [("time_factor", 0, r"eval\.humaneval_plus\.time_factor=0 must be a positive number"),
                                  ("time_floor_s", "1", r"time_floor_s='1' must be a positive number"),
                                  ("limit", 2.5, r"eval\.humaneval_plus\.limit=2\.5 must be a positive integer"),
                                  ("max_new_tokens", True, r"max_new_tokens=True must be a positive integer"),
                                  ("enabled", "yes", r"eval\.humaneval_plus\.enabled='yes' must be true or false"),
                                  ("time_facto", 2.0, r"eval\.humaneval_plus has unknown settings \['time_facto'\]")]:
        with pytest.raises(ValueError, match=message):
            plus_settings({"humaneval_plus": _section(HE_PLUS, **{field: value})})
    monkeypatch.setenv("MBPP_OVERRIDE_PATH", str(MBPP_PLUS))
    [mbpp] = plus_settings({"mbpp_plus": {"enabled": True, "path": None, "limit": 1}})
    assert (mbpp.path, mbpp.benchmark, mbpp.limit, mbpp.time_factor, mbpp.time_floor_s) == (MBPP_PLUS, "mbpp", 1, 4.0,
                                                                                          1.0)
    broken = tmp_path / "he.jsonl"
    broken.write_text(HE_PLUS.read_text().splitlines()[0] + "\n{oops\n")
    with pytest.raises(ValueError, match=r"he\.jsonl:2: not JSON"):
        check_evalplus({"humaneval_plus": _section(broken)})
    twice = tmp_path / "twice.jsonl"
    twice.write_text(HE_PLUS.read_text().splitlines()[0] + "\n" + HE_PLUS.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"task_id 'HumanEval/0' appears twice"):
        check_evalplus({"humaneval_plus": _section(twice)})
    fingerprint = data_fingerprints({"humaneval_plus": _section(HE_PLUS), "mbpp_plus": {"enabled": False}})
    assert list(fingerprint) == ["humaneval_plus"] and len(fingerprint["humaneval_plus"]) == 64


def test_a_ground_truth_that_fails_its_own_test_stops_the_evaluation_before_generating(tmp_path, monkeypatch):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**SLOW_ROW, "canonical_solution": "    return x[0]\n"}) + "\n")
    problems = load_evalplus(path, "humaneval")
    with pytest.raises(ValueError, match=r"ground truth of HumanEval/nap fails its own base test"):
        measured_limits(problems, settings=_settings(path), eval_cfg=SANDBOX)
    monkeypatch.setattr(evalplus_eval, "generate", lambda *a, **k: pytest.fail("generated before timing"))
    with pytest.raises(ValueError, match=r"ground truth of HumanEval/nap fails"):
        evaluate_evalplus(None, None, task="codegen", eval_cfg={**SANDBOX, "humaneval_plus": _section(path)},
                          style="completion")


def _plus_cfg(**kw) -> dict:
    return {"seed": 0, "batch_size": 2, **SANDBOX,
            "humaneval_plus": _section(HE_PLUS, **{"limit": 2, "time_floor_s": 0.5, **kw}),
            "mbpp_plus": _section(MBPP_PLUS, time_floor_s=0.5)}


def test_end_to_end_on_the_tiny_model_reports_base_and_plus_side_by_side(tiny_model):
    model, tok = tiny_model
    parts = evaluate_evalplus(model, tok, task="codegen", eval_cfg=_plus_cfg(), style="completion")
    assert set(parts) == {"humaneval_plus", "mbpp_plus"}
    he, mbpp = parts["humaneval_plus"], parts["mbpp_plus"]
    assert he.metrics == {"codegen/humaneval_plus_base_pass@1": 0.0, "codegen/humaneval_plus_pass@1": 0.0}
    assert set(mbpp.metrics) == {"codegen/mbpp_plus_base_pass@1", "codegen/mbpp_plus_pass@1"}
    ids = [r["task_id"] for r in he.records]
    assert len(ids) == 2 and set(ids) <= {"HumanEval/0", "HumanEval/2", "HumanEval/slow"}
    assert he.samples == {name: {i: [0, 1] for i in ids} for name in he.metrics}
    assert {r["task_id"] for r in mbpp.records} == {"Mbpp/2", "Mbpp/3"}
    for r in he.records + mbpp.records:
        assert r["base_limit_s"] >= 0.5 and r["plus_limit_s"] >= 0.5 and not r["base_passed"]
        assert r["plus_result"] == "not run (failed base)" and r["gen_time_s"] >= 0
    assert he.seconds > 0 and evaluate_evalplus(model, tok, task="codegen", eval_cfg={"seed": 0},
                                                style="completion") == {}


def test_end_to_end_scores_what_the_model_writes(tiny_model, monkeypatch):
    """The same path with the generator replaced by known answers: canonical, off-by-one, broken."""
    problems = {p.base.task_id: p.base for p in load_evalplus(HE_PLUS, "humaneval")}
    answers = {"HumanEval/0": problems["HumanEval/0"].canonical_solution.replace("distance < t", "distance <= t"),
               "HumanEval/2": problems["HumanEval/2"].canonical_solution,
               "HumanEval/slow": problems["HumanEval/slow"].canonical_solution}
    by_prompt = {problems[i].prompt: answer for i, answer in answers.items()}

    def known_answers(model, tok, prompts, *, seconds_out, **kw):
        seconds_out[:] = [0.0] * len(prompts)
        return [[by_prompt[p]] for p in prompts]

    monkeypatch.setattr(evalplus_eval, "generate", known_answers)
    cfg = _plus_cfg(limit=None)
    del cfg["mbpp_plus"]
    [part] = evaluate_evalplus(*tiny_model, task="codegen", eval_cfg=cfg, style="completion").values()
    assert part.metrics == {"codegen/humaneval_plus_base_pass@1": pytest.approx(1.0),
                            "codegen/humaneval_plus_pass@1": pytest.approx(2 / 3)}
    assert part.samples["codegen/humaneval_plus_pass@1"] == {"HumanEval/0": [0, 1], "HumanEval/2": [1, 1],
                                                             "HumanEval/slow": [1, 1]}
    assert part.samples["codegen/humaneval_plus_base_pass@1"] == {i: [1, 1] for i in answers}


def test_the_suite_runs_it_for_codegen_and_refuses_a_missing_file_before_any_model_work(tiny_model, tmp_path,
                                                                                       monkeypatch):
    from mixmerge.data.example import Example
    from mixmerge.eval import describe_subsets, evaluate_model, suite

    model, tok = tiny_model
    heldout = {"codegen": [Example("def add(a, b):\n", "    return a + b\n", "codegen", "g0")]}
    cfg = {**_plus_cfg(limit=1), "humaneval": {"enabled": False}, "loss": {"enabled": False}}
    del cfg["mbpp_plus"]
    metrics = evaluate_model(model, tok, eval_cfg=cfg, heldout=heldout, prompt_style="completion", out_dir=tmp_path)
    assert metrics == {"codegen/humaneval_plus_base_pass@1": 0.0, "codegen/humaneval_plus_pass@1": 0.0}
    [record] = [json.loads(line) for line in (tmp_path / "humaneval_plus.jsonl").read_text().splitlines()]
    assert {"task_id", "completion", "base_passed", "plus_passed", "base_limit_s", "plus_limit_s"} <= set(record)
    assert "a seeded subset of 1 HumanEval+ problems" in describe_subsets(cfg)
    # enabled without a file: the preflight stops the run before the held-out loss or any generation
    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    monkeypatch.setattr(suite, "heldout_nll_sums", lambda *a, **k: pytest.fail("held-out loss ran before the check"))
    monkeypatch.setattr(suite, "generate", lambda *a, **k: pytest.fail("generation ran before the check"))
    cfg = {**cfg, "loss": {"enabled": True}, "humaneval": {"enabled": True, "limit": 1},
           "humaneval_plus": {"enabled": True, "path": None}}
    with pytest.raises(FileNotFoundError, match=r"eval\.humaneval_plus\.path is not set"):
        evaluate_model(model, tok, eval_cfg=cfg, heldout=heldout, prompt_style="completion", out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_the_evaluation_cache_key_follows_the_file_not_only_its_path(tmp_path, monkeypatch):
    from mixmerge.eval.suite import eval_cache_config

    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    off = {"seed": 0, "humaneval_plus": {"enabled": False, "path": None}}
    assert "_evalplus_data" not in eval_cache_config(off)  # nothing enabled: nothing read, key as before
    data = tmp_path / "he.jsonl"
    data.write_text(HE_PLUS.read_text())
    monkeypatch.setenv("HUMANEVAL_OVERRIDE_PATH", str(data))
    on = {"seed": 0, "humaneval_plus": {"enabled": True, "path": None}}
    first = eval_cache_config(on)
    data.write_text(HE_PLUS.read_text().splitlines()[0] + "\n")
    assert eval_cache_config(on) != first and eval_cache_config(on) == eval_cache_config(on)
