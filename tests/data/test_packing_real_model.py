"""Packed rows on the real embedded SmolLM2-135M: same logits as one example at a time (slow)."""

import pytest
import torch

from mixmerge.data import SFTDataModule, build_mixture, forward_kwargs
from tests.conftest import SMOLLM2_CFG as SMOLLM2


@pytest.mark.slow
def test_real_model_packed_forward_equals_separate(store, stdlib_tasks):
    from mixmerge.models import load_model, load_tokenizer, resolve_base_model

    base = resolve_base_model(SMOLLM2, store)
    tokenizer = load_tokenizer(base.path)
    model = load_model(base.path).eval()
    mix = build_mixture(stdlib_tasks, {"codegen": 1, "codesum": 1}, by="examples", seed=0)
    mix = [e for e in mix if e.task == "codesum"][:4] + [e for e in mix if e.task == "codegen"][:2]
    dm = SFTDataModule(mix, [], tokenizer, prompt_style="chat", max_length=512, batch_size=2, seed=0)
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        packed = model(**forward_kwargs(batch)).logits
        pieces = 0
        for r in range(batch["input_ids"].shape[0]):
            pos = batch["position_ids"][r].tolist()
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            for s, e in zip(starts, starts[1:], strict=False):
                if batch["attention_mask"][r, s]:
                    alone = model(input_ids=batch["input_ids"][r : r + 1, s:e]).logits
                    torch.testing.assert_close(packed[r : r + 1, s:e], alone, atol=2e-3, rtol=1e-3)
                    pieces += 1
    assert pieces > batch["input_ids"].shape[0]
