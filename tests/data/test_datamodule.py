import pytest
import torch

from mixmerge.data import IGNORE_INDEX, Example, SFTDataModule, build_mixture, forward_kwargs


def _examples(n):
    return [Example(f"def f{i}(x):\n    '''Return x plus {i}.'''\n", f"    return x + {i}\n" * (1 + i % 4),
                    "codegen", f"e{i}") for i in range(n)]


def _order(dm):
    return [b["input_ids"].tolist() for b in dm.train_dataloader()]


def test_packed_batches_have_the_documented_format(tokenizer):
    dm = SFTDataModule(_examples(12), _examples(4), tokenizer, prompt_style="completion", max_length=96,
                       batch_size=2, seed=0)
    batches = list(dm.train_dataloader())
    b = batches[0]
    assert set(b) == {"input_ids", "attention_mask", "labels", "position_ids"}
    assert b["input_ids"].shape == b["labels"].shape == b["position_ids"].shape
    assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert b["input_ids"].shape[1] <= 96
    # every example's target tokens are in exactly one row of one batch
    n_targets = sum(int((x["labels"] != IGNORE_INDEX).sum()) for x in batches)
    from mixmerge.data import tokenize_example

    expected = sum(sum(1 for v in tokenize_example(e, tokenizer, "completion", 96)["labels"] if v != IGNORE_INDEX)
                   for e in _examples(12))
    assert n_targets == expected
    assert len(dm.train_dataloader()) == len(batches)
    val = next(iter(dm.val_dataloader()))
    assert "position_ids" in val


def test_bucketed_batches_have_no_position_ids(tokenizer):
    dm = SFTDataModule(_examples(12), [], tokenizer, prompt_style="completion", max_length=96,
                       batch_size=4, seed=0, packing=False)
    b = next(iter(dm.train_dataloader()))
    assert set(b) == {"input_ids", "attention_mask", "labels"} and b["input_ids"].shape[0] == 4
    assert set(forward_kwargs(b)) == {"input_ids", "labels", "attention_mask", "use_cache"}
    assert dm.val_dataloader() == []


def test_order_is_a_function_of_seed_and_epoch(tokenizer):
    def make(seed):
        return SFTDataModule(_examples(40), [], tokenizer, prompt_style="completion", max_length=64,
                             batch_size=2, seed=seed)

    a, b = make(0), make(0)
    assert _order(a) == _order(b)
    assert _order(a) != _order(make(1))
    a.train_sampler.set_epoch(1)
    epoch1 = _order(a)
    assert epoch1 != _order(b)
    b.train_sampler.set_epoch(1)
    assert epoch1 == _order(b)
    assert len(a.train_dataloader()) == len(b.train_dataloader())


def test_packed_forward_equals_separate_forwards(tiny_base, tokenizer):
    """With forward_kwargs, examples packed in one row do not attend to each other."""
    from mixmerge.models import load_model

    model = load_model(tiny_base.path).eval()
    dm = SFTDataModule(_examples(6), [], tokenizer, prompt_style="completion", max_length=128,
                       batch_size=2, seed=0)
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        packed = model(**forward_kwargs(batch)).logits
        checked = 0
        for r in range(batch["input_ids"].shape[0]):
            pos = batch["position_ids"][r].tolist()
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            for s, e in zip(starts, starts[1:], strict=False):
                if batch["attention_mask"][r, s] == 0:
                    continue  # the padding segment
                alone = model(input_ids=batch["input_ids"][r : r + 1, s:e]).logits
                torch.testing.assert_close(packed[r : r + 1, s:e], alone, atol=1e-4, rtol=1e-4)
                checked += 1
        assert checked >= 3  # at least one row really held several examples
        leaky = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      position_ids=batch["position_ids"]).logits
        assert (leaky - packed).abs().max() > 1e-3  # the mask is what keeps them apart


@pytest.mark.parametrize("packing", [True, False])
def test_padding_under_ten_percent_on_the_stdlib_mixture(stdlib_tasks, tokenizer, packing):
    mix = build_mixture(stdlib_tasks, {"codegen": 0.5, "codesum": 0.5}, by="examples", seed=0)
    dm = SFTDataModule(mix, [], tokenizer, prompt_style="completion", max_length=512, batch_size=8, seed=0,
                       packing=packing)
    assert dm.padding_fraction < 0.10
    measured = []
    for b in dm.train_dataloader():
        measured.append((int(b["attention_mask"].sum()), b["attention_mask"].numel()))
    real, total = map(sum, zip(*measured, strict=True))
    assert 1 - real / total == pytest.approx(dm.padding_fraction, abs=1e-9)
    assert real == dm.train_tokens


def test_bad_arguments_name_the_field(tokenizer):
    with pytest.raises(ValueError, match="model.prompt_style"):
        SFTDataModule(_examples(2), [], tokenizer, prompt_style="plain", max_length=64, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="no training examples"):
        SFTDataModule([], [], tokenizer, prompt_style="chat", max_length=64, batch_size=1, seed=0)



class _Recorder:
    """A do-nothing LightningModule that records the first tokens of every training batch it sees."""

    @staticmethod
    def make():
        import lightning as L

        class Recorder(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))
                self.seen = []

            def training_step(self, batch, batch_idx):
                self.seen.append((self.current_epoch, tuple(batch["input_ids"][0, :12].tolist()),
                                  sorted(tuple(ids[mask == 1].tolist())
                                         for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True))))
                return self.w.sum() ** 2

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Recorder()


def _fit(tokenizer, max_steps, *, ckpt_dir=None, resume=None):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    dm = SFTDataModule(_examples(40), [], tokenizer, prompt_style="completion", max_length=64, batch_size=2, seed=0)
    module = _Recorder.make()
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=7, save_top_k=-1)] if ckpt_dir else []
    L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=bool(ckpt_dir), callbacks=callbacks,
              enable_progress_bar=False, enable_model_summary=False, accelerator="cpu").fit(
        module, datamodule=dm, ckpt_path=resume)
    return module.seen, len(dm.train_dataloader())


def test_lightning_reshuffles_each_epoch_and_resumes_mid_epoch_exactly(tokenizer, tmp_path):
    per_epoch = len(SFTDataModule(_examples(40), [], tokenizer, prompt_style="completion", max_length=64,
                                  batch_size=2, seed=0).train_dataloader())
    total = 2 * per_epoch + 3
    full, _ = _fit(tokenizer, total)
    assert 7 < per_epoch < 20 and len(full) == total
    epoch0 = [rows for e, _, rows in full if e == 0]
    epoch1 = [rows for e, _, rows in full if e == 1]
    assert [r for b in epoch0 for r in b] != [r for b in epoch1 for r in b]  # reshuffled (set_epoch reached us)
    assert sorted(r for b in epoch0 for r in b) == sorted(r for b in epoch1 for r in b)  # same rows
    first, _ = _fit(tokenizer, 7, ckpt_dir=tmp_path)
    assert first == full[:7]
    resumed, _ = _fit(tokenizer, total, resume=str(tmp_path / "epoch=0-step=7.ckpt"))
    assert resumed == full[7:]  # the rest of epoch 0, then epochs 1 and 2, exactly as without the interruption
