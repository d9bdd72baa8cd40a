"""The Slurm launcher's stage logic without a cluster: which jobs share a training job, and its overrides."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from hydra_plugins.mixmerge_slurm_launcher.launcher import prepare_overrides, training_signature

BASE = {"model": {"name": "tiny"}, "task": {"name": "mixture"}, "finetune": {"method": "full"},
        "trainer": {"max_steps": 2}, "seed": 0, "cache": {"root": "/shared/cache"}, "merge": {"method": "ties"},
        "strategy": {"name": "compare", "variants": ["base", "specialists", "mixture", "merged"]}}


def _cfg(**changes):
    cfg = OmegaConf.create(BASE)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def test_merge_settings_share_one_training_job_and_training_settings_do_not():
    sig = training_signature(_cfg())
    assert training_signature(_cfg(**{"merge.method": "dare", "merge.weight": 0.7})) == sig
    assert training_signature(_cfg(**{"trainer.max_steps": 3})) != sig
    assert training_signature(_cfg(seed=1)) != sig
    assert json.loads(sig)["variants"] == ["mixture", "specialists"]
    merged_only = training_signature(_cfg(**{"strategy.variants": ["merged"]}))
    assert json.loads(merged_only)["variants"] == ["specialists"]


def test_strategies_that_train_nothing_need_no_training_job():
    assert training_signature(_cfg(**{"strategy.variants": ["base"]})) is None
    assert training_signature(_cfg(**{"strategy": {"name": "merge", "variants": []}})) is None


def test_prepare_overrides_replace_the_strategy():
    sig = training_signature(_cfg())
    out = prepare_overrides(["merge=dare", "strategy=compare", "strategy.merge_in_memory=true", "model=tiny"],
                            sig, 3)
    assert out == ["merge=dare", "model=tiny", "strategy=prepare", "strategy.variants=[mixture,specialists]",
                   "hydra.sweep.subdir=prepare_3"]
