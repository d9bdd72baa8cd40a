"""bf16 against fp32 on this CPU: a training step, the held-out loss and generation, in one run.

bf16 pays only where the CPU computes it natively (AVX512-BF16 or AMX); elsewhere torch emulates it and
it is much slower. ``trainer.precision=auto`` (models/precision.py) decides from the CPU flags; this
benchmark measures what that decision is worth on the machine at hand. Goals where bf16 is native:
>= 1.6x on each, held-out loss within 1 %.

    python benchmarks/cpu_precision.py                 # SmolLM2-135M, 2 threads, best of 3
    python benchmarks/cpu_precision.py --model tiny    # quick check of the script itself
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time

import torch
from train_throughput import MODELS, lightning_loop, make_batches

from mixmerge.cache import ArtifactStore
from mixmerge.data.example import Example
from mixmerge.eval.generate import generate
from mixmerge.eval.loss import heldout_loss
from mixmerge.eval.problems import load_humaneval
from mixmerge.models import load_model, load_tokenizer, resolve_base_model
from mixmerge.precision import cpu_flags, native_bf16_flag


def autocast(dtype: torch.dtype):
    """bf16 forward passes with float32 master weights (what the evaluation does under bf16)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def best_of(repeats: int, fn) -> tuple[float, object]:
    """The fastest of ``repeats`` timed calls (seconds) and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--examples", type=int, default=32, help="HumanEval prompt+solution pairs for the loss")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default="outputs/cache")
    parser.add_argument("--force", action="store_true", help="measure even where bf16 is emulated (slow)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    flag = native_bf16_flag(cpu_flags())
    print(f"CPU bf16: {'native (' + flag + ')' if flag else 'not native (emulated)'}; threads={args.threads}, "
          f"best of {args.repeats}", flush=True)
    if not flag and not args.force:
        print("bf16 is emulated here, so trainer.precision=auto keeps fp32 on this CPU; --force measures anyway "
              "(an AVX2-only EPYC gave, with --model tiny, train 0.16x, loss 0.32x, generate 0.52x)")
        return
    base = resolve_base_model(MODELS[args.model], ArtifactStore(args.cache))
    tokenizer = load_tokenizer(base.path)
    problems = load_humaneval()
    examples = [Example(p.prompt, p.canonical_solution, "codegen", p.task_id) for p in problems[: args.examples]]
    prompts = [p.prompt for p in problems[: args.prompts]]
    vocab = load_model(base.path).config.vocab_size
    batches = make_batches(args.steps + 1, 4, 256, vocab)
    seconds: dict[str, dict[str, float]] = {}
    losses: dict[str, float] = {}
    for name, dtype, precision in (("fp32", torch.float32, "32-true"), ("bf16", torch.bfloat16, "bf16-mixed")):
        torch.manual_seed(0)
        train_s = min(lightning_loop(load_model(base.path), batches, args.steps, precision=precision)
                      for _ in range(args.repeats))
        model = load_model(base.path)
        with autocast(dtype):
            loss_s, losses[name] = best_of(args.repeats, lambda m=model: heldout_loss(m, tokenizer, examples,
                                                                                     batch_size=8))
            gen_s, _ = best_of(args.repeats, lambda m=model: generate(m, tokenizer, prompts,
                                                                     max_new_tokens=args.new_tokens,
                                                                     batch_size=args.prompts))
        seconds[name] = {"train": train_s, "loss": loss_s, "generate": gen_s}
        print(f"{name}: train {args.steps} steps {train_s:.2f} s, loss on {len(examples)} examples {loss_s:.2f} s "
              f"(= {losses[name]:.4f} nats/token), generate {len(prompts)}x{args.new_tokens} tokens {gen_s:.2f} s",
              flush=True)
    speed = {part: seconds["fp32"][part] / seconds["bf16"][part] for part in ("train", "loss", "generate")}
    difference = abs(losses["bf16"] - losses["fp32"]) / losses["fp32"] * 100
    print(f"bf16 speed-up: train {speed['train']:.2f}×, loss {speed['loss']:.2f}×, generate {speed['generate']:.2f}×; "
          f"loss difference {difference:.2f}%")


if __name__ == "__main__":
    main()
