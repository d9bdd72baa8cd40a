import math

import pytest
import torch

from mixmerge.data.example import Example
from mixmerge.data.tokenize import tokenize_example
from mixmerge.eval.generate import generate
from mixmerge.eval.loss import heldout_loss

PROMPTS = ["def add(a, b):\n", "# A much longer prompt that needs padding on the left side\ndef f(x):\n", "x ="]


def test_batched_greedy_matches_one_at_a_time(tiny_model):
    model, tok = tiny_model
    batched = generate(model, tok, PROMPTS, max_new_tokens=8, batch_size=3)
    single = [generate(model, tok, [p], max_new_tokens=8, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert all(len(outs) == 1 and isinstance(outs[0], str) for outs in batched)


def test_padding_side_and_training_mode_are_restored(tiny_model):
    model, tok = tiny_model
    tok.padding_side = "right"
    model.train()
    generate(model, tok, PROMPTS[:1], max_new_tokens=2)
    assert tok.padding_side == "right" and model.training
    model.eval()


def test_sampling_gives_n_seeded_samples(tiny_model):
    model, tok = tiny_model
    a = generate(model, tok, PROMPTS[:2], max_new_tokens=6, n=4, temperature=1.0, top_p=0.95, seed=3)
    b = generate(model, tok, PROMPTS[:2], max_new_tokens=6, n=4, temperature=1.0, top_p=0.95, seed=3)
    assert a == b and all(len(outs) == 4 for outs in a)
    assert len(set(a[0])) > 1  # a random model at T=1 does not repeat itself four times
    with pytest.raises(ValueError, match="eval.temperature"):
        generate(model, tok, PROMPTS[:1], max_new_tokens=2, n=2, temperature=0.0)


def test_stop_strings_end_generation(tiny_model):
    model, tok = tiny_model
    free = generate(model, tok, PROMPTS, max_new_tokens=24)
    # whatever the random model emits, stopping on its own 2nd token's text ends every row early
    stops = sorted({o[0][:3] for o in free if len(o[0]) >= 3})
    stopped = generate(model, tok, PROMPTS, max_new_tokens=24, stop=stops)
    assert all(len(s[0]) <= len(f[0]) for s, f in zip(stopped, free, strict=False))


def _manual_loss(model, tok, examples):
    """Reference: transformers' own loss on the full logits, example by example (training's tokenisation)."""
    total, count = 0.0, 0
    for ex in examples:
        row = tokenize_example(ex, tok, "completion", 1024)
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
        n_targets = int((labels[0, 1:] != -100).sum())
        with torch.no_grad():
            out = model(input_ids=ids, labels=labels)  # HF mean over the unmasked (shifted) targets
        total += float(out.loss) * n_targets
        count += n_targets
    return total / count


def test_heldout_loss_is_token_mean_nll_of_targets_only(tiny_model):
    model, tok = tiny_model
    examples = [
        Example("def add(a, b):\n", "    return a + b\n", "codegen", "a"),
        Example("def neg(x):\n    return -x", "Negate a number.", "codesum", "b"),
        Example("def long_name_function(values):\n    total = 0\n", "    for v in values:\n        total += v\n",
                "codegen", "c"),
    ]
    loss = heldout_loss(model, tok, examples, batch_size=2)
    assert loss == pytest.approx(_manual_loss(model, tok, examples), rel=1e-4)
    # a random model over a 49k vocabulary is close to uniform: ln(49152) ~ 10.8
    assert 9.0 < loss < 12.5 and math.isfinite(loss)
