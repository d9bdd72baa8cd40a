"""Generation throughput on the default model: one prompt at a time versus our batched generation.

Greedy decoding of HumanEval prompts with the embedded SmolLM2-135M (converted from its GGUF once and
cached under --cache), through ``mixmerge.eval.generate.generate`` at batch size 1 and at --batch-size.
Prints generated tokens/s of each and the ratio; every row is forced to the full --max-new-tokens so
both sides generate the same token count.

    PYTHONPATH=src .venv/bin/python benchmarks/generation_throughput.py --prompts 16 --batch-size 16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from mixmerge.cache import ArtifactStore
from mixmerge.eval.generate import generate
from mixmerge.eval.problems import load_humaneval
from mixmerge.models import load_model, load_tokenizer, resolve_base_model

SMOLLM2 = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "model" / "smollm2-135m.yaml").read_text())


def timed_tokens_per_s(model, tok, prompts, batch_size, max_new_tokens) -> tuple[float, float]:
    model.generation_config.min_new_tokens = max_new_tokens  # no early EOS: equal work on both sides
    started = time.perf_counter()
    generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    seconds = time.perf_counter() - started
    return len(prompts) * max_new_tokens / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--single-prompts", type=int, default=4, help="prompts timed at batch size 1")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--cache", default="outputs/cache")
    args = parser.parse_args()

    base = resolve_base_model(SMOLLM2, ArtifactStore(args.cache))
    model, tok = load_model(base.path), load_tokenizer(base.path)
    prompts = [p.prompt for p in load_humaneval()[: args.prompts]]
    generate(model, tok, prompts[:1], max_new_tokens=4)  # warm-up
    print(f"SmolLM2-135M float32, torch threads {torch.get_num_threads()}, {args.max_new_tokens} new tokens/prompt")
    single, single_s = timed_tokens_per_s(model, tok, prompts[: args.single_prompts], 1, args.max_new_tokens)
    print(f"batch 1        : {single:7.1f} tokens/s ({args.single_prompts} prompts, {single_s:.1f} s)")
    batched, batched_s = timed_tokens_per_s(model, tok, prompts, args.batch_size, args.max_new_tokens)
    print(f"batch {args.batch_size:<8} : {batched:7.1f} tokens/s ({len(prompts)} prompts, {batched_s:.1f} s)")
    print(f"ratio          : {batched / single:7.2f}x")


if __name__ == "__main__":
    main()
