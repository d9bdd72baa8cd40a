"""Held-out loss: mean NLL per target token given the prompt, the cheap proxy for sweeps.

Examples are tokenised by ``tokenize_example``, exactly as in training (same rendering, truncation and
EOS), so the held-out loss measures what the fine-tune optimised. Only target positions go through the
vocabulary projection: with a 49k vocabulary that projection dominates the cost, and prompts are most of
the tokens (a codesum prompt is a whole function, its target one sentence).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mixmerge.data.example import Example
from mixmerge.data.tokenize import IGNORE_INDEX, tokenize_example


def _target_logits(model, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits at ``positions`` (a boolean mask over [batch, seq]) without projecting every position."""
    head = model.get_output_embeddings()
    decoder = getattr(model, "base_model", None)
    if head is None or decoder is None or decoder is model or getattr(model.config, "final_logit_softcapping", None):
        return model(input_ids=input_ids, attention_mask=attention).logits[positions]
    hidden = decoder(input_ids=input_ids, attention_mask=attention).last_hidden_state
    return head(hidden[positions])


def heldout_loss(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    prompt_style: str = "completion",
    batch_size: int = 8,
    max_tokens: int = 1024,
    desc: str | None = None,
) -> float:
    """Mean token NLL (nats) of every target token in ``examples``, prompt tokens masked."""
    sums = heldout_nll_sums(model, tokenizer, examples, prompt_style=prompt_style, batch_size=batch_size,
                            max_tokens=max_tokens, desc=desc)
    return loss_of(sums)


def loss_of(sums: Sequence[tuple[float, int]]) -> float:
    """Σ NLL / Σ target tokens over per-example ``(nll, tokens)`` sums: the held-out loss."""
    total_tokens = sum(tokens for _, tokens in sums)
    if total_tokens == 0:
        raise ValueError("held-out examples have no target tokens left; raise eval.loss.max_tokens")
    return sum(nll for nll, _ in sums) / total_tokens


def heldout_nll_sums(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    prompt_style: str = "completion",
    batch_size: int = 8,
    max_tokens: int = 1024,
    desc: str | None = None,
) -> list[tuple[float, int]]:
    """Per example, in order: (summed target-token NLL in nats, number of target tokens).

    The loss's confidence interval resamples these pairs (``eval/uncertainty.py``), so they come from the
    same batched forward passes as the loss itself (one scatter-add per batch, no extra pass).
    """
    if not examples:
        raise ValueError("held-out loss needs at least one example")
    rows = [tokenize_example(ex, tokenizer, prompt_style, max_tokens) for ex in examples]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))  # similar lengths per batch
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    nll_sums = [0.0] * len(rows)
    token_counts = [0] * len(rows)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=desc or "held-out loss",
                              disable=desc is None, leave=False):
                batch = [rows[i] for i in order[start:start + batch_size]]
                width = max(len(r["input_ids"]) for r in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
                for row, r in enumerate(batch):
                    n = len(r["input_ids"])
                    input_ids[row, :n] = torch.tensor(r["input_ids"])
                    attention[row, :n] = 1
                    labels[row, :n] = torch.tensor(r["labels"])
                # position t predicts token t+1: score positions whose next token is a target token
                next_labels = torch.full_like(labels, IGNORE_INDEX)
                next_labels[:, :-1] = labels[:, 1:]
                positions = next_labels != IGNORE_INDEX
                logits = _target_logits(model, input_ids.to(device), attention.to(device), positions.to(device))
                nll = torch.nn.functional.cross_entropy(logits.float(), next_labels[positions].to(device),
                                                        reduction="none")
                row_of = positions.nonzero()[:, 0].to(device)  # boolean indexing is row-major: same order
                per_row = torch.zeros(len(batch), dtype=torch.float64, device=device)
                per_row.index_add_(0, row_of, nll.double())
                counts = positions.sum(dim=1)
                for row, i in enumerate(order[start:start + batch_size]):
                    nll_sums[i] = float(per_row[row])
                    token_counts[i] = int(counts[row])
    finally:
        model.train(was_training)
    return list(zip(nll_sums, token_counts, strict=True))
