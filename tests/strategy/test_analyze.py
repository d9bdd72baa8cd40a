"""strategy=analyze: probe fine-tunes -> recommendation, given folders, and the config errors."""

from __future__ import annotations

import json
import math

import pytest

from mixmerge.strategy.analyze import probe_config, run


def test_probe_config_replaces_only_max_steps():
    cfg = {"trainer": {"max_steps": 500, "precision": "32-true"}, "analysis": {"probe": {"steps": 7}}}
    probe = probe_config(cfg)
    assert probe["trainer"] == {"max_steps": 7, "precision": "32-true"}
    assert cfg["trainer"]["max_steps"] == 500  # the run's own config is untouched


@pytest.mark.parametrize("steps", [0, -3, 2.5, None, True])
def test_probe_steps_must_be_a_positive_integer(steps):
    with pytest.raises(ValueError, match="analysis.probe.steps"):
        probe_config({"trainer": {"max_steps": 5}, "analysis": {"probe": {"steps": steps}}})


def test_probe_gives_a_recommendation_before_full_training(compose_cfg, run_strategy, capsys):
    cfg = compose_cfg("strategy=analyze", "analysis.probe.enabled=true", "analysis.probe.steps=2",
                      "trainer.max_steps=1000")
    _, run_dir = run_strategy(run, cfg)
    out = json.loads((run_dir / "analysis" / "recommendation.json").read_text())
    rec = out["recommendation"]
    assert rec["source"] == "probe" and out["probe_steps"] == 2
    assert rec["choice"] in ("mix", "merge", "uncertain") and -1.0 <= rec["r_mean"] <= 1.0
    assert sorted(out["models"]) == ["specialist/codegen", "specialist/codesum"]
    # the probes trained 2 steps, not trainer.max_steps=1000: their training manifests say so
    for path in out["models"].values():
        manifest = json.loads((__import__("pathlib").Path(path) / "manifest.json").read_text())
        assert manifest["config"]["trainer"]["max_steps"] == 2
    assert (run_dir / "analysis" / "analysis.json").is_file()
    assert "Recommendation (probe of 2 steps per task)" in capsys.readouterr().out


def test_given_folders_are_analysed_as_they_are(compose_cfg, run_strategy, session_store, tiny_base):
    # two folders that differ from the base in known ways: the base itself scaled, and a copy of the base
    import shutil

    from safetensors.torch import load_file, save_file

    folders = {}
    for name, scale in (("up", 1.01), ("down", 0.98)):
        dst = session_store.root / "analyze_folders" / name
        if not dst.exists():
            shutil.copytree(tiny_base.path, dst)
            for f in dst.glob("*.safetensors"):
                save_file({k: v * scale for k, v in load_file(f).items()}, f, metadata={"format": "pt"})
        folders[name] = str(dst)
    cfg = compose_cfg("strategy=analyze", f"analysis.base={tiny_base.path}", "analysis.pairs=null",
                      f"analysis.paths={{up: {folders['up']}, down: {folders['down']}}}")
    _, run_dir = run_strategy(run, cfg)
    rec = json.loads((run_dir / "analysis" / "recommendation.json").read_text())["recommendation"]
    # the two task vectors are +1% and -2% of the same weights: perfectly anti-correlated
    assert rec["source"] == "full" and math.isclose(rec["r_mean"], -1.0, abs_tol=1e-4) and rec["choice"] == "merge"


def test_paths_without_a_base_is_a_clear_error(compose_cfg, run_strategy, tmp_path):
    cfg = compose_cfg("strategy=analyze", f"analysis.paths={{a: {tmp_path}}}")
    with pytest.raises(ValueError, match="analysis.base"):
        run_strategy(run, cfg)
