"""objective.statistic: what compare.objective_value returns to the sweeper, mean or the pessimistic bound."""

from __future__ import annotations

import math

import pytest

from mixmerge.config import ConfigError, validate_config
from mixmerge.strategy.compare import objective_value
from mixmerge.sweep.objective import metric_statistic
from mixmerge.sweep.study import objective_values

RESULTS = {
    "merged": {"metrics": {"aggregate": 0.42, "codegen/loss": 1.90, "codesum/bleu4": 18.0},
               "ci95": {"aggregate": [0.38, 0.46], "codegen/loss": [1.85, 1.97], "codesum/bleu4": None},
               "n": {"aggregate": 200, "codegen/loss": 100, "codesum/bleu4": None}, "artifact": "m"},
    "mixture": {"metrics": {"aggregate": 0.40}, "artifact": "x"},  # an old entry: no ci95 at all
}


def _cfg(metric="aggregate", statistic=None, direction="maximize", variant="merged"):
    obj = {"variant": variant, "metric": metric, "direction": direction}
    if statistic is not None:
        obj["statistic"] = statistic
    return {"objective": obj}


def test_mean_is_the_metric_itself_and_the_default():
    assert objective_value(_cfg(), RESULTS) == 0.42  # no statistic key: configs from before it existed
    assert objective_value(_cfg(statistic="mean"), RESULTS) == 0.42
    assert objective_value(_cfg(statistic="mean", variant="mixture"), RESULTS) == 0.40
    assert math.isnan(objective_value(_cfg("codegen/bleu4"), RESULTS))  # missing metric: a failed trial
    assert objective_value(_cfg(variant="base"), RESULTS) is None


def test_lcb_is_the_lower_bound_when_maximizing_and_the_upper_bound_when_minimizing():
    assert objective_value(_cfg(statistic="lcb"), RESULTS) == 0.38
    assert objective_value(_cfg("codegen/loss", statistic="lcb", direction="minimize"), RESULTS) == 1.97
    assert objective_value(_cfg("codegen/loss", statistic="mean", direction="minimize"), RESULTS) == 1.90


def test_lcb_for_several_objectives_follows_each_direction():
    cfg = _cfg(["aggregate", "codegen/loss"], statistic="lcb", direction=["maximize", "minimize"])
    assert objective_value(cfg, RESULTS) == [0.38, 1.97]
    # one direction for all metrics, as hparams_search=merge_optuna_pareto leaves objective.direction
    assert objective_value(_cfg(["aggregate", "codegen/loss"], statistic="lcb"), RESULTS) == [0.38, 1.85]
    assert objective_value(_cfg(["aggregate", "codegen/loss"], direction=["minimize"], statistic="lcb"),
                           RESULTS) == [0.46, 1.97]
    with pytest.raises(ValueError, match=r"objective\.direction=\['maximize', 'minimize'\] has 2 entries for 3"):
        objective_value(_cfg(["aggregate", "codegen/loss", "codesum/bleu4"], direction=["maximize", "minimize"]),
                        RESULTS)


def test_lcb_without_an_interval_names_the_field_and_the_fix():
    for cfg in (_cfg("codesum/bleu4", statistic="lcb"), _cfg(statistic="lcb", variant="mixture")):
        with pytest.raises(ValueError, match=r"objective\.statistic=lcb needs the 95 % interval of "
                                             r"(merged/codesum/bleu4|mixture/aggregate).*set objective\.statistic=mean"):
            objective_value(cfg, RESULTS)


def test_the_sweeper_reads_what_objective_value_returns():
    """The Optuna sweeper's conversion of a job's return (study.objective_values) takes the lcb as is."""
    assert objective_values(objective_value(_cfg(statistic="lcb"), RESULTS), 1) == ([0.38], "")
    pair = objective_value(_cfg(["aggregate", "codegen/loss"], statistic="lcb", direction=["maximize", "minimize"]),
                           RESULTS)
    assert objective_values(pair, 2) == ([0.38, 1.97], "")


def test_an_unknown_statistic_fails_in_validate_config_before_any_work():
    with pytest.raises(ConfigError, match=r"objective\.statistic='lcbb' must be one of \['mean', 'lcb'\]"):
        validate_config(_cfg(statistic="lcbb"))
    with pytest.raises(ConfigError, match=r"objective\.direction='maximise' must be 'maximize' or 'minimize'"):
        validate_config(_cfg(direction="maximise"))
    with pytest.raises(ValueError, match=r"objective\.statistic='median'"):
        metric_statistic(RESULTS["merged"], "aggregate", statistic="median")
