"""Training progress for step-budgeted runs: "specialist/codegen: 3/16 steps", metrics under short names."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class StepProgressBar(TQDMProgressBar):
    """Counts optimizer steps against ``max_steps`` and names the model being trained.

    Lightning's own bars count batches per epoch, which reads "Epoch 0/-2" when training is bounded by
    ``max_steps`` (``max_epochs=-1``), and show each metric under its full logged name
    ("specialist/codegen/loss"), which its rich bar cuts to "specialist/codege…". Here the label is the
    bar's description once and the metrics lose that prefix: "loss", "tokens_per_s", "val_loss".
    """

    def __init__(self, label: str, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.label = label

    def _total_steps(self, trainer) -> int | None:
        return trainer.max_steps if trainer.max_steps > 0 else None

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(desc=self.label, total=self._total_steps(self.trainer), unit="step",
                    position=2 * self.process_position, disable=self.is_disabled, leave=True,
                    dynamic_ncols=True, file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        # Not Lightning's: that one resets the bar to this epoch's batches and names it "Epoch N".
        bar = self.train_progress_bar
        bar.reset(total=self._total_steps(trainer))
        bar.n = trainer.global_step  # a resumed run starts where its checkpoint left off; epochs do not reset it
        bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            bar.n = trainer.global_step  # optimizer steps, not batches (gradient accumulation)
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # also redraws

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        prefix = f"{self.label}/"
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version: noise here
        return {k.removeprefix(prefix): v for k, v in items.items()}
