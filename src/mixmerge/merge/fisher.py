"""Diagonal Fisher information of a specialist on its own task data, for Fisher merging.

Matena & Raffel 2022, https://arxiv.org/abs/2111.09832: F_j = E_x[(d log p(y|x) / d theta_j)^2],
estimated here with the empirical Fisher (the data's own labels) averaged over batches; a batch of one
example gives the per-example estimate of the paper. Computed once per specialist and saved as a
safetensors folder whose tensor names match the model's, so ``merge.fisher_paths`` can point at it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from mixmerge.files import publish_folder, temp_folder_beside
from mixmerge.merge.io import WEIGHTS_FILE


def compute_diagonal_fisher(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean over ``batches`` of the squared gradient of the batch's mean NLL, per trainable parameter.

    Each batch is a mapping of model inputs that includes ``labels`` (e.g. input_ids, attention_mask,
    labels for a causal LM), so ``model(**batch).loss`` is the negative log-likelihood.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise ValueError(f"Fisher batch {n_batches} gave a non-finite loss ({loss.item()})")
            loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n].add_(p.grad.detach().float().pow(2))
            n_batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("compute_diagonal_fisher got no batches; pass the specialist's task data")
    return {n: f / n_batches for n, f in fisher.items()}


def save_fisher(fisher: Mapping[str, torch.Tensor], out: str | os.PathLike) -> Path:
    """Write a Fisher dict as ``out/model.safetensors`` (atomic), readable by ``merge.fisher_paths``."""
    tmp = temp_folder_beside(Path(out))
    save_file({n: t.detach().contiguous().cpu() for n, t in fisher.items()}, str(tmp / WEIGHTS_FILE))
    publish_folder(tmp, Path(out))
    return Path(out)
