"""Data stage: task sources (stdlib corpus, hub, local files) -> one example format; mixture; datamodule.

The pipeline calls, in order:
  tasks = load_tasks(cfg.task, store=store, seed=seed)             # {task: TaskSplits(train, valid, test, key, info)}
  mixed = build_mixture(tasks, cfg.task.mixture.weights, by=..., seed=seed, tokenizer=tok)
  dm = SFTDataModule(train, val, tok, prompt_style=..., max_length=..., batch_size=..., seed=seed)
  loss = model(**forward_kwargs(batch)).loss                       # packed rows: per-example attention

Sources (``task.tasks.<name>.source``): ``stdlib`` (stdlib.py, the offline default), ``hub`` (hub.py:
KodCode, CodeXGLUE, any hub table) and ``local`` (local.py: JSONL/JSON/Parquet with a field mapping).
"""

from mixmerge.data.example import Example, render_prompt, render_target
from mixmerge.data.mixture import build_mixture, realised_shares
from mixmerge.data.rows import DatasetNotAvailableError
from mixmerge.data.tasks import TaskSplits, load_task_splits, load_tasks
from mixmerge.data.tokenize import IGNORE_INDEX, tokenize_example

__all__ = [
    "DatasetNotAvailableError",
    "IGNORE_INDEX",
    "Example",
    "SFTDataModule",
    "TaskSplits",
    "build_mixture",
    "forward_kwargs",
    "load_task_splits",
    "load_tasks",
    "realised_shares",
    "render_prompt",
    "render_target",
    "tokenize_example",
]


def __getattr__(name: str):
    # The datamodule pulls in torch and Lightning; import it only when asked for.
    if name in ("SFTDataModule", "forward_kwargs"):
        from mixmerge.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'mixmerge.data' has no attribute {name!r}")
