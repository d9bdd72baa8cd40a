"""The Lightning datamodule for supervised fine-tuning: tokenised examples in packed or bucketed batches.

Batches are dicts of ``input_ids``, ``attention_mask`` and ``labels`` (prompt and padding = -100), plus
``position_ids`` when packing. Packed rows hold several examples back to back with positions restarting
at 0 for each; padding at the end of a row is one more segment with its own restarted positions.

Attention in packed rows: transformers (>= 4.54) turns restarted ``position_ids`` into a block-diagonal
causal mask when it is called *without* ``attention_mask`` and without a KV cache, so examples in one row
do not see each other. Call the model with ``forward_kwargs(batch)``, which does exactly that; passing the
``attention_mask`` (or ``use_cache=True``) would make attention cross example boundaries inside a row.

Order is a pure function of ``(seed, epoch)``: rows are packed once by seed and their order is reshuffled
per epoch (Lightning calls ``set_epoch`` on ``batch_sampler.sampler``, which is the batch sampler itself).
A run resumed mid-epoch from a Lightning checkpoint skips the batches that epoch already trained on (read
from the trainer's restored batch progress), so it sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mixmerge.data.example import PROMPT_STYLES, Example
from mixmerge.data.tokenize import (
    IGNORE_INDEX,
    bucket_by_length,
    pack_first_fit,
    padding_fraction,
    tokenize_example,
)

log = logging.getLogger(__name__)


class TokenizedRows(Dataset):
    """Tokenised examples; an item is a *row* given by a tuple of example indices (one unless packed)."""

    def __init__(self, tokenized: list[dict[str, list[int]]], *, packed: bool):
        self.tokenized = tokenized
        self.packed = packed
        self.lengths = [len(t["input_ids"]) for t in tokenized]

    def __len__(self) -> int:
        return len(self.tokenized)

    def __getitem__(self, row: tuple[int, ...]) -> dict[str, list[int]]:
        input_ids, labels, positions = [], [], []
        for i in row:
            item = self.tokenized[i]
            input_ids += item["input_ids"]
            labels += item["labels"]
            positions += range(len(item["input_ids"]))
        out = {"input_ids": input_ids, "labels": labels}
        if self.packed:
            out["position_ids"] = positions
        return out


class RowBatchSampler:
    """Yields batches of rows (tuples of example indices); the order depends only on seed and epoch."""

    def __init__(self, lengths: Sequence[int], *, batch_size: int, max_length: int, seed: int,
                 packed: bool, shuffle: bool, name: str, batches_done: Callable[[], int] | None = None):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.packed = packed
        self.shuffle = shuffle
        self.name = name
        self.epoch = 0
        self.batches_done = batches_done  # how many of this epoch's batches were trained before a resume
        # Packing is done once, so every epoch has the same number of steps (LR schedules rely on it).
        self.rows = pack_first_fit(self.lengths, max_length, seed=seed) if packed else None

    @property
    def sampler(self) -> RowBatchSampler:
        """Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler``: we are our own sampler."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        log.info("%s epoch %d: padding %.2f%% of batch tokens", self.name, epoch, 100 * self.padding_fraction())

    def batches(self) -> list[list[tuple[int, ...]]]:
        epoch_seed = f"{self.seed}:{self.epoch}" if self.shuffle else f"{self.seed}:fixed"
        if self.packed:
            rows = list(self.rows)
            if self.shuffle:
                random.Random(epoch_seed).shuffle(rows)
            return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        if self.shuffle:
            groups = bucket_by_length(self.lengths, self.batch_size, seed=epoch_seed)
        else:  # evaluation: sorted by length so batches are tight, same every time
            order = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], i))
            groups = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [[(i,) for i in group] for group in groups]

    def padding_fraction(self) -> float:
        return padding_fraction(
            [[sum(self.lengths[i] for i in row) for row in batch] for batch in self.batches()]
        )

    def __iter__(self):
        # A generator, so the order is fixed at the first batch: after Lightning's set_epoch and after a
        # checkpoint restore, both of which happen after the DataLoader iterator is created.
        batches = self.batches()
        skip = self.batches_done() if self.batches_done is not None else 0
        if skip:
            log.info("%s epoch %d: resuming after %d of %d batches", self.name, self.epoch, skip, len(batches))
        yield from batches[skip:]

    def __len__(self) -> int:
        n_rows = len(self.rows) if self.packed else len(self.lengths)
        return -(-n_rows // self.batch_size)


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning treats as resumable: the position inside an epoch is not stored here but
    re-derived from the trainer's restored batch progress (see ``RowBatchSampler.batches_done``); the state
    only guards against resuming with a different data order."""

    def state_dict(self) -> dict:
        sampler = self.batch_sampler
        return {"seed": sampler.seed, "rows": len(sampler), "epoch": sampler.epoch}

    def load_state_dict(self, state: dict) -> None:
        sampler = self.batch_sampler
        if state.get("seed") != sampler.seed or state.get("rows") != len(sampler):
            raise ValueError(
                f"resuming with different training data: the checkpoint had seed={state.get('seed')} and "
                f"{state.get('rows')} batches per epoch, now seed={sampler.seed} and {len(sampler)}; "
                "resume with the same seed, task and finetune settings, or delete the checkpoint"
            )


def collate_rows(rows: list[dict[str, list[int]]], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows to the longest one; padding gets label -100, mask 0 and positions of its own."""
    width = max(len(r["input_ids"]) for r in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
    }
    packed = "position_ids" in rows[0]
    if packed:
        batch["position_ids"] = torch.arange(width).repeat(len(rows), 1)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        batch["input_ids"][b, :n] = torch.tensor(row["input_ids"])
        batch["attention_mask"][b, :n] = 1
        batch["labels"][b, :n] = torch.tensor(row["labels"])
        if packed:
            batch["position_ids"][b, :n] = torch.tensor(row["position_ids"])
            batch["position_ids"][b, n:] = torch.arange(width - n)
    return batch


def forward_kwargs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | bool]:
    """The model inputs for a batch: packed batches go without ``attention_mask`` so the model masks per
    example from ``position_ids`` (see the module docstring); always without a KV cache."""
    keys = ("input_ids", "labels", "position_ids") if "position_ids" in batch else (
        "input_ids", "labels", "attention_mask")
    return {**{k: batch[k] for k in keys}, "use_cache": False}


class SFTDataModule(L.LightningDataModule):
    """Train/val loaders for SFT on ``Example`` lists; see the module docstring for the batch format."""

    def __init__(
        self,
        train: Sequence[Example],
        val: Sequence[Example],
        tokenizer,
        *,
        prompt_style: str,
        max_length: int,
        batch_size: int,
        seed: int,
        packing: bool = True,
        num_workers: int = 0,
    ):
        super().__init__()
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"model.prompt_style={prompt_style!r} is not one of {PROMPT_STYLES}")
        if batch_size < 1:
            raise ValueError(f"finetune.batch_size={batch_size} must be at least 1")
        if not train:
            raise ValueError("no training examples: check task.tasks and task.max_train_examples")
        self.train_examples, self.val_examples = list(train), list(val)
        self.tokenizer = tokenizer
        self.prompt_style = prompt_style
        self.max_length = max_length
        self.batch_size = batch_size
        self.seed = seed
        self.packing = packing
        self.num_workers = num_workers
        self.pad_id = next(
            (t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0
        )
        self.train_set: TokenizedRows | None = None
        self.val_set: TokenizedRows | None = None
        self.train_sampler: RowBatchSampler | None = None

    def _tokenize(self, examples: list[Example]) -> TokenizedRows:
        tokenized = [tokenize_example(e, self.tokenizer, self.prompt_style, self.max_length) for e in examples]
        return TokenizedRows(tokenized, packed=self.packing)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._tokenize(self.train_examples)
            self.val_set = self._tokenize(self.val_examples)
            self.train_sampler = self._sampler(self.train_set, shuffle=True, name="train")
            self.train_sampler.batches_done = self._batches_done_this_epoch
            log.info(
                "SFT data: %d train examples -> %d batches (%s, max_length %d), %d val examples; "
                "padding %.2f%% of train batch tokens",
                len(self.train_set), len(self.train_sampler), "packed" if self.packing else "length-bucketed",
                self.max_length, len(self.val_set), 100 * self.padding_fraction,
            )

    def _sampler(self, data: TokenizedRows, *, shuffle: bool, name: str) -> RowBatchSampler:
        return RowBatchSampler(data.lengths, batch_size=self.batch_size, max_length=self.max_length,
                               seed=self.seed, packed=self.packing, shuffle=shuffle, name=name)

    def _batches_done_this_epoch(self) -> int:
        """Training batches of the current epoch already seen: 0 unless restored mid-epoch from a checkpoint."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        try:
            return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        except AttributeError:
            return 0

    @property
    def padding_fraction(self) -> float:
        """Share of the current epoch's train batch tokens that are padding."""
        self.setup()
        return self.train_sampler.padding_fraction()

    @property
    def train_tokens(self) -> int:
        """Real (non-padding) tokens per training epoch."""
        self.setup()
        return sum(self.train_set.lengths)

    def _loader(self, data: TokenizedRows, sampler: RowBatchSampler) -> DataLoader:
        from functools import partial

        return ResumableDataLoader(data, batch_sampler=sampler, collate_fn=partial(collate_rows, pad_id=self.pad_id),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, self.train_sampler)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        if not len(self.val_set):
            return []
        return self._loader(self.val_set, self._sampler(self.val_set, shuffle=False, name="val"))
