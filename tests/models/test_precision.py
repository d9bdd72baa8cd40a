"""``trainer.precision=auto``: bf16 only where the hardware computes it natively."""

from __future__ import annotations

import pytest

from mixmerge.precision import compute_dtype_name, cpu_flags, resolve_precision

AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_flags_are_read_from_cpuinfo():
    assert "avx2" in cpu_flags(AVX2_ONLY) and "avx512_bf16" not in cpu_flags(AVX2_ONLY)
    assert cpu_flags("") == frozenset()


def test_auto_picks_bf16_only_on_cpus_that_do_it_natively():
    chosen, why = resolve_precision("auto", accelerator="cpu", flags=cpu_flags(SAPPHIRE))
    assert chosen == "bf16-mixed" and "avx512_bf16" in why
    chosen, why = resolve_precision("auto", accelerator="cpu", flags=cpu_flags(AVX2_ONLY))
    assert chosen == "32-true" and "emulated" in why
    assert resolve_precision("auto", accelerator="gpu", cuda_bf16=True)[0] == "bf16-mixed"
    assert resolve_precision("auto", accelerator="gpu", cuda_bf16=False)[0] == "32-true"


def test_an_explicit_precision_is_kept_and_a_wrong_one_named():
    assert resolve_precision("32-true", accelerator="cpu", flags=cpu_flags(SAPPHIRE)) == ("32-true", "as configured")
    with pytest.raises(ValueError, match="trainer.precision='bf17'.*auto"):
        resolve_precision("bf17", accelerator="cpu")
    assert compute_dtype_name("bf16-mixed") == "bfloat16" and compute_dtype_name("32-true") == "float32"


def test_auto_enters_the_cache_key_as_what_it_resolves_to_and_sets_the_evaluation_autocast(monkeypatch):
    """An fp32 model trained where auto resolved to 32-true keeps the key of trainer.precision=32-true; where
    the CPU has native bf16 the key says bf16-mixed and evaluation runs under bf16 autocast."""
    from mixmerge import precision, stages

    cfg = {"finetune": {}, "seed": 0, "task": {}, "model": {"prompt_style": "completion", "dtype": "float32"},
           "trainer": {"max_steps": 2, "precision": "auto", "accelerator": "cpu"}}
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: cpu_flags(AVX2_ONLY))
    fp32 = {**cfg, "trainer": {**cfg["trainer"], "precision": "32-true"}}
    assert stages.training_config(cfg) == stages.training_config(fp32) and stages.evaluation_dtype(cfg) is None
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: cpu_flags(SAPPHIRE))
    assert stages.training_config(cfg)["trainer"]["precision"] == "bf16-mixed"
    assert stages.evaluation_dtype(cfg) == "bfloat16"
    assert stages.evaluation_dtype({**cfg, "model": {**cfg["model"], "dtype": "bfloat16"}}) is None
