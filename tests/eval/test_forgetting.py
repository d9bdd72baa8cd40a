"""The forgetting check: change against the base with a 95% interval from lm-eval's stderr."""

from __future__ import annotations

import math

import pytest

from mixmerge.eval.forgetting import changes_vs_base, describe_forgetting, higher_is_better

ACC = "lm_eval/pydoc_next/acc"


def _m(acc: float, se: float, **extra) -> dict:
    return {ACC: acc, f"{ACC}_stderr": se, "codegen/loss": 2.0, **extra}


def test_change_and_interval_from_both_stderrs():
    changes = changes_vs_base({"base": _m(0.60, 0.03), "merged": _m(0.45, 0.04), "mixture": _m(0.58, 0.04)})
    by = {c.variant: c for c in changes}
    assert set(by) == {"merged", "mixture"} and all(c.metric == ACC for c in changes)
    half = 1.96 * math.sqrt(0.03**2 + 0.04**2)  # = 0.098
    assert by["merged"].delta == pytest.approx(-0.15)
    assert (by["merged"].low, by["merged"].high) == pytest.approx((-0.15 - half, -0.15 + half))
    assert by["merged"].significant_loss  # the whole interval is below zero
    assert not by["mixture"].significant_loss  # -0.02 ± 0.098 straddles zero


def test_lower_is_better_metrics_lose_upwards():
    ppl = "lm_eval/wikitext/word_perplexity"
    assert not higher_is_better(ppl) and higher_is_better("lm_eval/gsm8k/exact_match,strict-match")
    changes = changes_vs_base({"base": {ppl: 20.0, f"{ppl}_stderr": 0.5},
                               "merged": {ppl: 25.0, f"{ppl}_stderr": 0.5}})
    assert changes[0].delta == pytest.approx(5.0) and changes[0].significant_loss


def test_metrics_without_stderr_or_base_make_no_claim():
    assert changes_vs_base({"base": {ACC: 0.5}, "merged": {ACC: 0.1}}) == []
    assert changes_vs_base({"merged": _m(0.1, 0.01)}) == []
    assert changes_vs_base({"base": _m(0.5, float("nan")), "merged": _m(0.1, 0.01)}) == []
    assert describe_forgetting([]) is None


def test_verdict_line_names_significant_losses_or_says_none_then_every_change():
    changes = changes_vs_base({"base": _m(0.60, 0.03), "merged": _m(0.45, 0.04), "mixture": _m(0.58, 0.04)})
    verdict, detail = describe_forgetting(changes).splitlines()
    assert verdict == ("Forgetting check: significant loss against the base: merged pydoc_next/acc -0.150 "
                       "[-0.248, -0.052] (95% interval from lm-eval's stderr, unpaired).")
    assert detail == "  pydoc_next/acc (base 0.600): merged -0.150 [-0.248, -0.052]; mixture -0.020 [-0.118, +0.078]"
    calm = describe_forgetting(changes_vs_base({"base": _m(0.60, 0.03), "mixture": _m(0.58, 0.04)}))
    assert calm.splitlines()[0] == ("Forgetting check: no variant loses significantly against the base on "
                                    "pydoc_next/acc (95% interval from lm-eval's stderr, unpaired).")
