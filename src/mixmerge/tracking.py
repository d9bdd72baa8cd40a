"""One W&B run per job (offline by default) plus CSV logs, closed on every exit path.

Lightning's WandbLogger reuses an open W&B run, so a multirun would log every job into the first
job's run unless each job finishes its own: ``open_tracker`` is a context manager that always calls
``wandb.finish`` with the job's exit code.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Tracker:
    """What the stages log through: Lightning loggers for training, plain metrics and tables otherwise."""

    def __init__(self, run_dir: Path, logger_cfg: Mapping[str, Any], wandb_run=None):
        self.run_dir = run_dir
        self.cfg = logger_cfg
        self.wandb_run = wandb_run

    def lightning_loggers(self, label: str) -> list:
        from lightning.pytorch.loggers import CSVLogger, WandbLogger

        loggers = []
        if self.cfg.get("csv", True):
            loggers.append(CSVLogger(save_dir=str(self.run_dir / "csv"), name=label.replace("/", "_"), version=""))
        if self.wandb_run is not None:
            loggers.append(WandbLogger(experiment=self.wandb_run))
        return loggers

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.log(dict(metrics))

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(dict(summary))

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def log_images(self, images: Mapping[str, Path]) -> None:
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({k: wandb.Image(str(p)) for k, p in images.items() if str(p).endswith(".png")})


def _tags(cfg: Mapping[str, Any]) -> list[str]:
    tags = list(cfg["logger"]["wandb"].get("tags") or [])
    tags += [f"model:{cfg['model']['name']}", f"strategy:{cfg['strategy']['name']}"]
    if cfg.get("merge"):
        tags.append(f"merge:{cfg['merge'].get('method')}")
    return tags


@contextlib.contextmanager
def open_tracker(cfg: Mapping[str, Any], run_dir: Path, *, group: str | None = None) -> Iterator[Tracker]:
    """Start the job's W&B run (if enabled) with the resolved config; always finish it."""
    wb = cfg["logger"]["wandb"]
    run = None
    if wb.get("enabled") and wb.get("mode") != "disabled":
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(project=wb["project"], entity=wb.get("entity"), group=wb.get("group") or group,
                         tags=_tags(cfg), config=dict(cfg), mode=wb["mode"], dir=str(run_dir), reinit="finish_previous")
        log.info("W&B run %s (%s) in %s; sync later with `wandb sync %s`", run.id, wb["mode"], run.dir,
                 Path(run.dir).parent)
    exit_code = 1
    try:
        yield Tracker(run_dir, cfg["logger"], run)
        exit_code = 0
    finally:
        if run is not None:
            run.finish(exit_code=exit_code)
