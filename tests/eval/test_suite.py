import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mixmerge.data.example import Example
from mixmerge.eval import aggregate, describe_subsets, evaluate_model
from mixmerge.eval.suite import load_samples, pass_at_k_table

CONF = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "conf" / "eval")


def eval_config(name: str, **overrides) -> dict:
    with initialize_config_dir(CONF, version_base=None):
        cfg = OmegaConf.to_container(compose(name), resolve=True)
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


HELDOUT = {
    "codegen": [Example("def add(a, b):\n", "    return a + b\n", "codegen", f"g{i}") for i in range(3)],
    "codesum": [
        Example("def neg(x):\n    return -x", "Negate a number.", "codesum", "s0"),
        Example("def square(x):\n    return x * x", "Square a number.", "codesum", "s1"),
        Example("def first(xs):\n    return xs[0]", "Return the first element of a list.", "codesum", "s2"),
    ],
}


def tiny_eval_cfg(**overrides):
    base = {"humaneval.limit": 2, "humaneval.max_new_tokens": 8, "codesum.limit": 2, "codesum.max_new_tokens": 6,
            "loss.limit": 2, "batch_size": 2, "workers": 2, "lm_eval.limit": 2}
    base.update(overrides)
    return eval_config("default", **base)


def test_every_config_composes_with_the_documented_keys():
    for name in ("default", "full", "none", "quick"):
        cfg = eval_config(name)
        for key in ("humaneval", "codesum", "loss", "aggregate", "timeout_s", "memory_mb", "workers", "n", "k",
                    "temperature", "top_p", "batch_size", "samples", "bleu"):
            assert key in cfg, (name, key)
    assert eval_config("full")["humaneval"]["limit"] is None and eval_config("full")["mbpp"]["enabled"]
    assert eval_config("none")["enabled"] is False
    assert eval_config("quick")["humaneval"]["enabled"] is False


def test_default_run_reports_every_metric_and_writes_per_problem_records(tiny_model, tmp_path):
    model, tok = tiny_model
    metrics = evaluate_model(model, tok, eval_cfg=tiny_eval_cfg(), heldout=HELDOUT, prompt_style="completion",
                             out_dir=tmp_path)
    assert set(metrics) == {"codegen/humaneval_pass@1", "codegen/loss", "codesum/bleu4", "codesum/loss",
                            "lm_eval/pydoc_next/acc", "lm_eval/pydoc_next/acc_norm",
                            "lm_eval/pydoc_next/acc_stderr", "lm_eval/pydoc_next/acc_norm_stderr"}
    assert metrics["codegen/humaneval_pass@1"] == 0.0  # a random 3M model solves nothing
    assert 0.0 <= metrics["codesum/bleu4"] < 100.0
    assert 8.0 < metrics["codegen/loss"] < 13.0 and 8.0 < metrics["codesum/loss"] < 13.0
    records = [json.loads(line) for line in (tmp_path / "humaneval.jsonl").read_text().splitlines()]
    assert len(records) == 2 and {"task_id", "prompt", "completion", "result", "passed", "gen_time_s",
                                  "exec_time_s"} <= set(records[0])
    summaries = [json.loads(line) for line in (tmp_path / "codesum.jsonl").read_text().splitlines()]
    assert len(summaries) == 2 and {"prediction", "reference", "bleu4"} <= set(summaries[0])
    saved = json.loads((tmp_path / "eval_summary.json").read_text())
    assert saved["metrics"] == metrics and "humaneval" in saved["seconds"]
    # every metric but lm-eval's stderr has the per-example observations it is the mean / ratio of
    samples = load_samples(tmp_path)
    assert set(samples) == {m for m in metrics if not m.endswith("_stderr")}
    for name, sample in samples.items():
        assert sample.value == pytest.approx(metrics[name], rel=1e-9), name
    assert samples["codegen/humaneval_pass@1"].ids == tuple(r["task_id"] for r in records)
    assert [round(x, 4) for x in samples["codesum/bleu4"].numerators] == [r["bleu4"] for r in summaries]
    assert len(samples["codegen/loss"].ids) == 2 and set(samples["codegen/loss"].ids) <= {"g0", "g1", "g2"}
    assert all(d > 0 for d in samples["codesum/loss"].denominators)  # target tokens per example
    # the default aggregate: minus the mean held-out loss (the terms with power on a small model, see the YAML)
    assert aggregate(metrics, tiny_eval_cfg()) == pytest.approx(-(metrics["codegen/loss"] + metrics["codesum/loss"]) / 2)
    full = eval_config("full")  # eval=full: the paper's pass@1 and BLEU
    assert aggregate(metrics, full) == pytest.approx((metrics["codegen/humaneval_pass@1"] + metrics["codesum/bleu4"] / 100) / 2)


def test_sampled_pass_at_k_is_added_when_n_above_one(tiny_model, tmp_path):
    model, tok = tiny_model
    cfg = tiny_eval_cfg(n=3, k=[1, 2, 10], temperature=1.0, **{"codesum.enabled": False, "loss.enabled": False,
                                                                "humaneval.limit": 1, "lm_eval.tasks": []})
    metrics = evaluate_model(model, tok, eval_cfg=cfg, heldout={"codegen": HELDOUT["codegen"]},
                             prompt_style="completion", out_dir=tmp_path)
    assert set(metrics) == {"codegen/humaneval_pass@1", "codegen/humaneval_pass@2"}  # k=10 > n is skipped
    modes = [json.loads(line)["mode"] for line in (tmp_path / "humaneval.jsonl").read_text().splitlines()]
    assert modes == ["greedy", "sampled", "sampled", "sampled"]


def test_none_returns_empty_and_quick_reports_losses_only(tiny_model):
    model, tok = tiny_model
    assert evaluate_model(model, tok, eval_cfg=eval_config("none"), heldout=HELDOUT, prompt_style="completion",
                          out_dir=None) == {}
    quick = eval_config("quick", **{"loss.limit": 2})
    metrics = evaluate_model(model, tok, eval_cfg=quick, heldout=HELDOUT, prompt_style="completion", out_dir=None)
    assert set(metrics) == {"codegen/loss", "codesum/loss"}
    assert aggregate(metrics, quick) == pytest.approx(-(metrics["codegen/loss"] + metrics["codesum/loss"]) / 2)


def test_pass_at_k_table_averages_problems_and_skips_large_k():
    table = pass_at_k_table({"a": [True, False, False, False], "b": [False] * 4}, [1, 2, 5])
    assert table == {1: pytest.approx(0.125), 2: pytest.approx(0.25)}


def test_chat_prompt_style_runs_end_to_end(tiny_model, tmp_path):
    model, tok = tiny_model
    cfg = tiny_eval_cfg(**{"humaneval.limit": 1, "loss.limit": 1, "codesum.limit": 1, "lm_eval.tasks": []})
    metrics = evaluate_model(model, tok, eval_cfg=cfg, heldout=HELDOUT, prompt_style="chat", out_dir=tmp_path)
    assert set(metrics) == {"codegen/humaneval_pass@1", "codegen/loss", "codesum/bleu4", "codesum/loss"}
    (record,) = [json.loads(line) for line in (tmp_path / "humaneval.jsonl").read_text().splitlines()]
    assert record["prompt"].startswith("<|im_start|>") and "Complete the following Python function." in record["prompt"]


def test_caption_names_the_subset_sizes():
    caption = describe_subsets(eval_config("default"))
    assert "a seeded subset of 16 of the 164 HumanEval problems" in caption and "eval=full" in caption
    assert "32 examples per task" in caption
    full = describe_subsets(eval_config("full"))
    assert "all of the 164 HumanEval problems" in full and "eval=full" not in full
    assert describe_subsets(eval_config("none")).startswith("No evaluation")
