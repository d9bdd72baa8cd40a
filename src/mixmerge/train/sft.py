"""Train one model (a specialist or the mixture) with Lightning and export it as an HF folder."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mixmerge.data import SFTDataModule
from mixmerge.data.example import Example
from mixmerge.models import load_tokenizer
from mixmerge.train.adapters import export_model, prepare_model
from mixmerge.train.module import SFTModule
from mixmerge.train.progress import StepProgressBar

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


def build_trainer(trainer_cfg: Mapping[str, Any], finetune: Mapping[str, Any], *, ckpt_dir: Path,
                  loggers: Sequence, callbacks: Sequence = ()) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mixmerge.precision import resolve_precision

    precision, why = resolve_precision(str(trainer_cfg["precision"]), accelerator=str(trainer_cfg["accelerator"]))
    log.info("training precision %s (trainer.precision=%s: %s)", precision, trainer_cfg["precision"], why)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", every_n_train_steps=int(
        trainer_cfg["checkpoint_every_n_steps"]), save_last=True, save_top_k=1, auto_insert_metric_name=False)
    return L.Trainer(
        accelerator=trainer_cfg["accelerator"],
        devices=trainer_cfg["devices"],
        precision=precision,
        max_steps=int(trainer_cfg["max_steps"]),
        max_epochs=-1,
        accumulate_grad_batches=int(finetune["accumulate_grad_batches"]),
        gradient_clip_val=float(finetune["grad_clip"]) or None,
        limit_val_batches=trainer_cfg["limit_val_batches"],
        val_check_interval=trainer_cfg["val_check_interval"],
        check_val_every_n_epoch=None if trainer_cfg["val_check_interval"] else 1,
        log_every_n_steps=int(trainer_cfg["log_every_n_steps"]),
        enable_progress_bar=bool(trainer_cfg["enable_progress_bar"]),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        logger=list(loggers) or False,
        callbacks=[checkpoint, *callbacks],
        default_root_dir=str(ckpt_dir.parent),
        deterministic=False,
    )


def train_model(base_path: Path, *, train: Sequence[Example], val: Sequence[Example],
                finetune: Mapping[str, Any], trainer_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any],
                out_dir: Path, seed: int, packing: bool = True, loggers: Sequence = (),
                callbacks: Sequence = (), label: str = "train") -> dict:
    """Fine-tune the base on ``train`` and write the HF folder into ``out_dir``.

    ``out_dir`` doubles as the work folder: an interrupted run leaves its Lightning checkpoints in
    ``out_dir/checkpoints`` and a rerun resumes from the last one.
    """
    if not train:
        raise ValueError(f"{label}: no training examples (check task.* limits and sources)")
    if trainer_cfg.get("num_threads"):
        torch.set_num_threads(int(trainer_cfg["num_threads"]))
    L.seed_everything(seed, workers=True, verbose=False)
    tokenizer = load_tokenizer(base_path)
    model = prepare_model(base_path, finetune, dtype=model_cfg["dtype"])
    datamodule = SFTDataModule(  # resumes mid-epoch: see data/datamodule.py
        train, val, tokenizer, prompt_style=model_cfg["prompt_style"], max_length=int(finetune["max_length"]),
        batch_size=int(finetune["batch_size"]), seed=seed, packing=bool(packing))
    module = SFTModule(model, finetune, total_steps=int(trainer_cfg["max_steps"]), log_prefix=label)
    ckpt_dir = out_dir / CHECKPOINTS
    last = ckpt_dir / "last.ckpt"
    resume = str(last) if last.is_file() else None
    if resume:
        log.info("%s: resuming from %s", label, last)
    if trainer_cfg["enable_progress_bar"]:
        callbacks = [*callbacks, StepProgressBar(label)]
    trainer = build_trainer(trainer_cfg, finetune, ckpt_dir=ckpt_dir, loggers=loggers, callbacks=callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    changed = export_model(module.model, finetune, base_path, out_dir, tokenizer, dtype=model_cfg["dtype"])
    (out_dir / "trained_tensors.json").write_text(json.dumps(changed, indent=0))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the exported weights are the product; checkpoints were for resume
    return {"train_metrics": metrics, "steps": trainer.global_step, "examples": len(train),
            "padding_fraction": getattr(datamodule, "padding_fraction", None), "method": finetune["method"]}
