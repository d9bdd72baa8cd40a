"""The one LightningModule for supervised fine-tuning of a causal LM.

Specialists and the mixture are trained by this same module with the same ``finetune`` config: only
the data differs, which is what makes the mix-versus-merge comparison fair.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from mixmerge.data.datamodule import forward_kwargs


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class SFTModule(L.LightningModule):
    """Next-token loss on the target tokens only (labels of prompt and padding are -100)."""

    def __init__(self, model: torch.nn.Module, finetune: Mapping[str, Any], *, total_steps: int,
                 log_prefix: str = "train"):
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode; LoRA dropout must be active
        self.finetune = dict(finetune)
        self.total_steps = total_steps
        self.log_prefix = log_prefix
        # LoRA/QLoRA checkpoints keep only the trainable tensors, so loading must not demand the frozen base.
        self.strict_loading = finetune["method"] == "full"
        self._step_started = time.perf_counter()

    def forward(self, **batch):
        return self.model(**batch)

    def _loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # packed rows go without attention_mask so attention stays inside each example (data/datamodule.py)
        return self.model(**forward_kwargs(batch)).loss

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        now = time.perf_counter()
        elapsed_s, self._step_started = now - self._step_started, now
        tokens = int(batch["attention_mask"].sum())
        padding_fraction = 1.0 - tokens / batch["attention_mask"].numel()
        p = self.log_prefix
        self.log(f"{p}/loss", loss, prog_bar=True)
        self.log(f"{p}/lr", self.optimizers().param_groups[0]["lr"])
        self.log(f"{p}/tokens_per_s", tokens / max(elapsed_s, 1e-9), prog_bar=True)
        self.log(f"{p}/padding_fraction", padding_fraction)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log(f"{self.log_prefix}/val_loss", self._loss(batch), prog_bar=True)

    def configure_optimizers(self):
        ft = self.finetune
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=ft["lr"], weight_decay=ft["weight_decay"],
                                      betas=tuple(ft["betas"]))

        def schedule(step: int) -> float:
            return warmup_cosine(step, warmup_steps=ft["warmup_steps"], total_steps=self.total_steps,
                                 min_lr_ratio=ft["min_lr_ratio"])

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # Checkpoints: drop frozen tensors (the base of a LoRA run) and keep the RNG state, so a resumed
    # run draws the same dropout masks as an uninterrupted one.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        if self.finetune["method"] != "full":
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["mixmerge_rng"] = {"torch": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "mixmerge_rng" in checkpoint:
            torch.set_rng_state(checkpoint["mixmerge_rng"]["torch"])
