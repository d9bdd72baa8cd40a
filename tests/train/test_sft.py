"""Lightning SFT on the tiny model: learning, resuming after a crash, LoRA and QLoRA exports."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from mixmerge.data import load_tasks
from mixmerge.eval.loss import heldout_loss
from mixmerge.models import load_model, load_tokenizer
from mixmerge.train.sft import train_model
from tests.conftest import TINY_MODEL_CFG

FULL = {"method": "full", "lr": 2e-3, "weight_decay": 0.0, "betas": [0.9, 0.95], "warmup_steps": 2,
        "min_lr_ratio": 0.1, "grad_clip": 1.0, "batch_size": 4, "accumulate_grad_batches": 1, "max_length": 128}
LORA = {**FULL, "method": "lora", "lr": 5e-3,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}}
QLORA = {**LORA, "method": "qlora", "quantization": {"quant_type": "nf4", "double_quant": True,
                                                      "compute_dtype": "float32"}}
TRAINER = {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 8, "val_check_interval": None,
           "limit_val_batches": 2, "log_every_n_steps": 1, "checkpoint_every_n_steps": 4, "num_threads": None,
           "enable_progress_bar": False}
TASK = {"name": "codegen", "tasks": {"codegen": {"source": "stdlib"}}, "max_train_examples": 48,
        "max_eval_examples": 16, "packing": True}


@pytest.fixture(scope="module")
def codegen(session_store):
    return load_tasks(TASK, store=session_store, seed=0)["codegen"]


def _train(tiny_base, codegen, out_dir, finetune=FULL, trainer=TRAINER, **kw):
    return train_model(tiny_base.path, train=codegen.train, val=codegen.valid, finetune=finetune,
                       trainer_cfg=trainer, model_cfg=TINY_MODEL_CFG, out_dir=out_dir, seed=0, **kw)


def test_specialist_learns_its_task(tiny_base, codegen, tmp_path):
    info = _train(tiny_base, codegen, tmp_path, trainer={**TRAINER, "max_steps": 30})
    assert info["steps"] == 30 and info["padding_fraction"] < 0.10
    tok = load_tokenizer(tiny_base.path)
    before = heldout_loss(load_model(tiny_base.path), tok, codegen.test)
    after = heldout_loss(load_model(tmp_path), tok, codegen.test)
    # a random-init model starts near ln(49152) = 10.8 nats; 30 steps must cut that by a wide margin
    assert before > 10.0 and after < before - 2.0, (before, after)
    assert not (tmp_path / "checkpoints").exists()
    assert set(load_file(tmp_path / "model.safetensors")) <= set(json.loads((tmp_path / "trained_tensors.json").read_text()))


class _CrashAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_interrupted_training_resumes_to_the_same_weights(tiny_base, codegen, tmp_path):
    _train(tiny_base, codegen, tmp_path / "straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(tiny_base, codegen, tmp_path / "resumed", callbacks=[_CrashAt(6)])
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").is_file()
    info = _train(tiny_base, codegen, tmp_path / "resumed")
    assert info["steps"] == TRAINER["max_steps"]
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    base = load_file(tiny_base.path / "model.safetensors")
    for name, tensor in straight.items():
        assert not torch.equal(tensor, base[name]), name
        assert torch.allclose(tensor, resumed[name], atol=1e-6, rtol=0), name


@pytest.mark.parametrize("finetune", [LORA, QLORA], ids=["lora", "qlora"])
def test_adapter_finetunes_export_full_weights_and_the_adapter(tiny_base, codegen, tmp_path, finetune):
    _train(tiny_base, codegen, tmp_path, finetune=finetune, trainer={**TRAINER, "max_steps": 4})
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    changed = json.loads((tmp_path / "trained_tensors.json").read_text())
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)
    tuned = load_file(tmp_path / "model.safetensors")
    base = load_file(tiny_base.path / "model.safetensors")
    assert set(tuned) == set(base)
    for name, tensor in tuned.items():
        assert tensor.dtype == torch.float32
        if name in changed:
            assert not torch.equal(tensor, base[name]), name
        else:
            assert torch.equal(tensor, base[name]), name


def test_progress_bar_counts_steps_under_the_models_name(tiny_base, codegen, tmp_path, capsys):
    """With max_steps training the bar reads "specialist/codegen ... 3/3" (not "Epoch 0/-2"), metrics unprefixed."""
    _train(tiny_base, codegen, tmp_path, trainer={**TRAINER, "max_steps": 3, "enable_progress_bar": True},
           label="specialist/codegen")
    out = capsys.readouterr().out
    final = out.split("\r")[-1] if "\r" in out else out
    bars = [line for line in out.replace("\r", "\n").splitlines() if line.startswith("specialist/codegen")]
    assert bars and "3/3" in bars[-1] and "step" in bars[-1], final
    assert "loss=" in bars[-1] and "tokens_per_s=" in bars[-1], bars[-1]
    assert "Epoch" not in out and "specialist/codegen/" not in out and "v_num" not in out
