"""strategy=methods: candidates checked before work, selection on validation, paired tests with Holm."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixmerge.config import ConfigError, validate_config
from mixmerge.eval.evidence import Measured
from mixmerge.eval.uncertainty import Sample
from mixmerge.strategy import methods as M


def test_holm_matches_the_step_down_rule_by_hand():
    # sorted 0.01, 0.02, 0.04 (m = 3): 3*0.01 = 0.03, max(0.03, 2*0.02) = 0.04, max(0.04, 1*0.04) = 0.04
    assert M.holm([0.04, 0.01, None, 0.02]) == pytest.approx([0.04, 0.03, None, 0.04])
    assert M.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert M.holm([]) == []


def test_gap_closed_is_the_share_of_the_uniform_to_mixture_gap():
    assert M.gap_closed(-1.0, -1.2, -0.8) == pytest.approx(0.5)
    assert M.gap_closed(-0.8, -1.2, -0.8) == pytest.approx(1.0)
    assert M.gap_closed(-1.3, -1.2, -0.8) == pytest.approx(-0.25)
    assert M.gap_closed(-1.0, -0.8, -1.2) is None  # the mixture is behind: no gap to close


def test_plan_candidates_expands_grids_and_names_bad_fields():
    plan = M.plan_candidates({"candidates": {"ties": {"merge": {"method": "ties"}, "grid": {"weight": [0.3, 0.7]}},
                                             "fisher": {"merge": {"method": "fisher"}}, "off": None}},
                             {"method": "dare_ties", "seed": 3, "density": 0.2}, 2)
    assert [c["name"] for c in plan] == ["ties", "fisher"]
    assert [p["weight"] for p in plan[0]["points"]] == [0.3, 0.7] and plan[0]["uniform"]
    assert plan[0]["points"][0]["seed"] == 3 and "density" not in plan[0]["points"][0]  # generic keys only
    assert not plan[1]["uniform"] and len(plan[1]["points"]) == 1
    with pytest.raises(ValueError, match=r"strategy.candidates.ties.*weight=1.5 is outside"):
        M.plan_candidates({"candidates": {"ties": {"merge": {"method": "ties"}, "grid": {"weight": [0.5, 1.5]}}}}, {}, 2)
    with pytest.raises(ValueError, match=r"strategy.candidates.x.merge.method is missing"):
        M.plan_candidates({"candidates": {"x": {"grid": {"weight": [0.5]}}}}, {}, 2)
    with pytest.raises(ValueError, match=r"unknown keys \['grdi'\]"):
        M.plan_candidates({"candidates": {"x": {"merge": {"method": "ties"}, "grdi": {}}}}, {}, 2)
    with pytest.raises(ValueError, match="not a known merge method"):
        M.plan_candidates({"candidates": {"x": {"merge": {"method": "tie"}}}}, {}, 2)


def test_a_layerwise_candidate_is_checked_before_any_training():
    strategy = {"candidates": {"lw": {"merge": {"method": "slerp"}, "search": "layerwise", "n_trials": 2}}}
    with pytest.raises(ValueError, match=r"strategy.candidates.lw: .*layer-wise search sets per-block weights"):
        M.plan_candidates(strategy, {}, 2)
    strategy = {"candidates": {"lw": {"merge": {"method": "ties", "density": 0.5}, "search": "layerwise"}}}
    with pytest.raises(ValueError, match="a search needs at least 1 trial"):
        M.plan_candidates(strategy, {}, 2)


def test_a_bad_candidate_stops_the_run_before_any_training(compose_cfg):
    cfg = compose_cfg("strategy=methods", "+strategy.candidates.bad.merge.method=ties",
                      "+strategy.candidates.bad.grid.weight=[2.0]")
    with pytest.raises(ConfigError, match="strategy.candidates.bad"):
        validate_config(cfg)


def test_selection_eval_keeps_only_the_held_out_loss():
    sel = M.selection_eval({"humaneval": {"enabled": True, "limit": 3}, "codesum": {"enabled": True},
                            "loss": {"limit": 8}, "lm_eval": {"tasks": ["pydoc_next"]}, "seed": 1}, ["codegen", "codesum"])
    assert not sel["humaneval"]["enabled"] and sel["humaneval"]["limit"] == 3 and not sel["codesum"]["enabled"]
    assert sel["loss"] == {"limit": 8, "enabled": True} and sel["lm_eval"]["tasks"] == [] and sel["seed"] == 1
    assert sel["aggregate"]["terms"] == {"codegen/loss": -1.0, "codesum/loss": -1.0}


def _loss(values):
    return Sample.of_scores({f"e{i}": float(v) for i, v in enumerate(values)})


def test_candidate_rows_pair_each_candidate_with_the_reference_and_the_mixture():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, 40)

    def measured(shift):
        losses = 2.0 + noise + shift
        return Measured({"codegen/loss": float(losses.mean()), "aggregate": -float(losses.mean())},
                        {"codegen/loss": _loss(losses)})

    ev_cfg = {"aggregate": {"method": "mean", "terms": {"codegen/loss": -1.0}}}
    data = {"mixture": measured(-0.2), "merged/ties": measured(0.0), "merged/new": measured(-0.1),
            "merged/same": measured(0.0001)}
    rows = M.candidate_rows(["merged/ties", "merged/new", "merged/same"], data, "merged/ties", ev_cfg)
    by = {r["variant"]: r for r in rows}
    assert by["merged/ties"]["vs_best_uniform"] is None
    assert by["merged/new"]["gap_closed"] == pytest.approx(0.5)
    new = by["merged/new"]["vs_best_uniform"]
    assert new["difference"] == pytest.approx(0.1) and new["p_holm"] >= new["p_value"]
    assert M.outcome(new) == "better"
    assert M.outcome(by["merged/new"]["vs_mixture"]) == "worse"
    assert "not separable" in M.describe_comparison(by["merged/same"]["vs_best_uniform"]) or \
        M.outcome(by["merged/same"]["vs_best_uniform"]) == "worse"


def test_methods_runs_selects_on_validation_and_writes_table_json_and_figure(compose_cfg, run_strategy):
    from mixmerge.strategy.methods import run

    cfg = compose_cfg("strategy=methods", "strategy.candidates.dare=null", "strategy.candidates.della=null",
                      "strategy.candidates.ties.grid.weight=[0.2,0.8]", "strategy.candidates.linear.grid.weight=[0.5]",
                      "strategy.candidates.layerwise.n_trials=2",  # K = model=tiny's 2 layers by default
                      *(f"strategy.candidates.{c}=null" for c in ("regmean", "regmean_plus", "iso_c", "iso_cts")))
    validate_config(cfg)
    objective, run_dir = run_strategy(run, cfg)
    record = json.loads((run_dir / "methods.json").read_text())
    assert set(record["variants"]) == {"base", "specialist/codegen", "specialist/codesum", "mixture",
                                       "merged/linear", "merged/ties", "merged/fisher", "merged/correlation",
                                       "merged/tsv", "merged/layerwise"}
    search = record["selection"]["merged/layerwise"]
    assert len(search["scored"]) == 2 and set(search["scored"][0]["layerwise"]["point"].values()) == {0.0}
    assert search["scored"][1]["layerwise"]["point"] != search["scored"][0]["layerwise"]["point"]
    assert search["chosen"]["layerwise"] == max(search["scored"], key=lambda s: s["validation"])["layerwise"]
    ties = record["selection"]["merged/ties"]
    assert [s["merge"]["weight"] for s in ties["scored"]] == [0.2, 0.8]
    best = max(ties["scored"], key=lambda s: s["validation"])
    assert ties["chosen"]["merge"]["weight"] == best["merge"]["weight"]
    assert record["best_uniform"] in ("merged/linear", "merged/ties")
    rows = {r["variant"]: r for r in record["candidates"]}
    assert rows[record["best_uniform"]]["vs_best_uniform"] is None
    fisher = rows["merged/fisher"]
    assert fisher["vs_mixture"]["n"] == 16 and "p_holm" in fisher["vs_mixture"]  # 8 test items per task
    for name, variant in record["variants"].items():
        assert set(variant["ci95"]) == set(variant["metrics"]), name
    assert objective == max(r["aggregate"] for r in record["candidates"])
    text = (run_dir / "methods.md").read_text()
    assert "| merged/fisher |" in text and "p_holm" in text and "chosen on validation" in text
    assert (run_dir / "methods.png").stat().st_size > 5000
