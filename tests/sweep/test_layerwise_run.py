"""`python run.py -m hparams_search=merge_optuna_layerwise` on the tiny model: three trials, the first the
analysis-derived seed, the others per-block merges that differ block by block (slow: trains two specialists)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from mixmerge.merge.params import resolve_params
from tests.conftest import REPO

FAST = ["model=tiny", "trainer.max_steps=2", "task.max_train_examples=16", "task.max_eval_examples=8", "eval=quick",
        "eval.loss.limit=4", "analysis.enabled=false", "logger=none", "strategy.variants=[merged]"]


def _share(cache, base_folder, group_filter: str, layer: int) -> float:
    """codegen's share of the delta L2 of one layer's tensors of a group, from the cached specialists."""
    base = load_file(str(base_folder / "model.safetensors"))
    norms = {}
    for manifest in cache.glob("specialist/*/manifest.json"):
        task = json.loads(manifest.read_text())["config"]["task"]
        state = load_file(str(manifest.parent / "model.safetensors"))
        norms[task] = math.sqrt(sum(float(((state[k].double() - base[k].double()) ** 2).sum()) for k in base
                                    if group_filter in k and f"layers.{layer}." in k))
    return norms["codegen"] / (norms["codegen"] + norms["codesum"])


@pytest.mark.slow
def test_three_trials_seeded_from_the_analysis_with_per_block_merges(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "run.py", "-m", "hparams_search=merge_optuna_layerwise", "hydra.sweeper.n_trials=3",
         *FAST,  # the command; model=tiny's own default K is 2 (conf/model/tiny.yaml)
         f"cache.root={tmp_path / 'cache'}",
         f"hydra.sweeper.storage=sqlite:///{tmp_path / 'studies.db'}", f"hydra.sweep.dir={sweep}"],
        cwd=REPO, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(3)]
    logs = [(sweep / str(i) / "run.log").read_text() for i in range(3)]
    details = [r["variants"]["merged"]["details"]["layerwise"] for r in runs]
    assert sum("cache miss: building delta norms" in log for log in logs) == 1  # measured once per sweep
    assert all(re.search(r"merged ties in memory in [\d.]+ s", log) for log in logs)
    assert len({r["variants"]["merged"]["artifact"] for r in runs}) == 3  # three different merges

    cache = tmp_path / "cache"
    base_folder = next(cache.glob("base/*/"))
    seed = details[0]
    assert set(runs[0]["config"]["layerwise"]["point"].values()) == {0.0}
    for g, group_filter in (("attn", "self_attn"), ("mlp", "mlp")):
        expected = [_share(cache, base_folder, group_filter, layer) for layer in range(2)]
        assert seed["weight"][g] == pytest.approx(expected, rel=1e-6)  # trial 0: the analysis-derived weights
        assert seed["density"][g] == pytest.approx([0.5, 0.5])  # around merge.density
    for d in details[1:]:
        values = [d[f][g][b] for f in ("weight", "density") for g in ("attn", "mlp") for b in range(2)]
        seeds = [seed[f][g][b] for f in ("weight", "density") for g in ("attn", "mlp") for b in range(2)]
        assert len(set(values)) == 8 and all(v != s for v, s in zip(values, seeds, strict=True))
        params = resolve_params(d["merge"] | {"lambda": 1.0}, 2)
        for b in range(2):  # the resolved schedule puts each block's values on its layer's tensors
            p = params.for_tensor(f"model.layers.{b}.self_attn.v_proj.weight", 2)
            assert p.weights[0] == pytest.approx(d["weight"]["attn"][b]) and p.densities[1] == pytest.approx(
                d["density"]["attn"][b])
            p = params.for_tensor(f"model.layers.{b}.mlp.down_proj.weight", 2)
            assert p.weights[1] == pytest.approx(1 - d["weight"]["mlp"][b]) and p.densities[0] == pytest.approx(
                d["density"]["mlp"][b])
