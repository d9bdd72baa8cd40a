import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mixmerge.analysis.stage import recommend_from_probe, run_analysis

CONF = Path(__file__).resolve().parents[2] / "conf" / "analysis" / "default.yaml"

METRICS = {
    "specialist/codegen": {"metrics": {"codegen/humaneval_pass@1": 0.40, "codesum/bleu4": 4.0, "aggregate": 0.22}},
    "specialist/codesum": {"metrics": {"codegen/humaneval_pass@1": 0.05, "codesum/bleu4": 20.0, "aggregate": 0.125}},
    "mixture": {"metrics": {"codegen/humaneval_pass@1": 0.30, "codesum/bleu4": 18.0, "aggregate": 0.28}},
    "merged": {"metrics": {"codegen/humaneval_pass@1": 0.36, "codesum/bleu4": 16.0, "aggregate": 0.26}},
}


@pytest.fixture(scope="module")
def low_r_specialists(tiny_base, tmp_path_factory, make_variant, make_correlated):
    from safetensors.torch import load_file

    state = load_file(str(tiny_base / "model.safetensors"))
    root = tmp_path_factory.mktemp("stage")
    da, db = {}, {}
    for i, name in enumerate(n for n in state if "mlp" in n):
        da[name], db[name] = make_correlated(state[name].shape, 0.1, seed=200 + i)
    return {"specialist/codegen": make_variant(tiny_base, root / "gen", da),
            "specialist/codesum": make_variant(tiny_base, root / "sum", db)}


def test_default_config_drives_the_whole_stage(tiny_base, low_r_specialists, tmp_path):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF), resolve=True)
    assert CONF.read_text().startswith("# ")
    assert cfg["thresholds"] == {"r_mix": 0.7, "r_merge": 0.4, "statistic": "layer_mean"}
    assert cfg["probe"]["steps"] > 0
    # the pipeline produced only the specialists here: pairs naming other models are skipped
    out = run_analysis(tiny_base, low_r_specialists, cfg, tmp_path, variant_metrics=METRICS)
    assert out.recommendation.choice == "merge"
    assert out.recommendation.r_mean == pytest.approx(0.1, abs=0.05)
    assert out.check["winner"] == "mix" and out.check["recommendation_correct"] is False
    assert out.check["margin"] == pytest.approx(0.02)
    saved = json.loads(out.files["recommendation"].read_text())
    assert saved["recommendation"]["choice"] == "merge"
    assert {p.suffix for p in out.plots} == {".png", ".svg"}
    assert "**merge**" in out.files["report"].read_text()


def test_probe_recommendation(tiny_base, low_r_specialists):
    probes = {"codegen": low_r_specialists["specialist/codegen"], "codesum": low_r_specialists["specialist/codesum"]}
    rec, result = recommend_from_probe(tiny_base, probes, {"r_mix": 0.7, "r_merge": 0.4})
    assert rec.choice == "merge" and rec.source == "probe"
    assert result.pairs == [("codegen", "codesum")]
    with pytest.raises(ValueError, match="analysis.probe"):
        recommend_from_probe(tiny_base, {"codegen": probes["codegen"]}, {"r_mix": 0.7, "r_merge": 0.4})
