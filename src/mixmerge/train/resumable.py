"""Mid-epoch resumption: a train loader that Lightning can checkpoint and fast-forward.

A plain DataLoader restarts its epoch from the first batch after a crash, so a resumed run would see
some batches twice and others never, and end with different weights than an uninterrupted one. Lightning
saves the ``state_dict`` of any loader that has one; ours records how many batches of the current epoch
the trainer has processed, and skips exactly those after a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mixmerge.data import SFTDataModule


class ResumableLoader:
    """Wraps a DataLoader; exposes its samplers so Lightning still reshuffles per epoch via ``set_epoch``."""

    def __init__(self, loader, batches_done: Callable[[], int]):
        self.loader = loader
        self.batches_done = batches_done
        self._skip = 0

    @property
    def sampler(self):
        return self.loader.sampler

    @property
    def batch_sampler(self):
        return self.loader.batch_sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        iterator = iter(self.loader)
        skip, self._skip = self._skip, 0
        for _ in range(skip):
            next(iterator)
        return iterator

    def state_dict(self) -> dict:
        return {"batches_done": int(self.batches_done())}

    def load_state_dict(self, state: dict) -> None:
        self._skip = int(state["batches_done"]) % max(1, len(self.loader))


class ResumableSFTData(SFTDataModule):
    """The SFT datamodule with a train loader that resumes mid-epoch."""

    def train_dataloader(self):
        def batches_done() -> int:
            # `processed` already counts the batch whose end triggered the checkpoint
            return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

        return ResumableLoader(super().train_dataloader(), batches_done)
