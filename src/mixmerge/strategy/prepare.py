"""``strategy=prepare``: train (or find in the cache) what a sweep's merge/evaluate jobs need — the base,
each specialist and the mixture — and evaluate nothing.

Run it once before a sweep's jobs (the Slurm launcher does, as its own job) so N merge jobs do not all
wait on the cache lock while one of them trains for hours. It writes ``prepared.json`` in the run dir
and returns the same summary: which artifacts were trained here (host, Slurm job) and which were reused.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixmerge.cache import MANIFEST, ArtifactStore, write_json_atomic

log = logging.getLogger(__name__)


def _built_here(path: Path, since_unix: float) -> bool:
    """The artifact's manifest was written after this job started (by this job: builds are locked per key)."""
    import json

    return json.loads((path / MANIFEST).read_text()).get("created_unix", 0.0) >= since_unix


def run(cfg: Mapping[str, Any], *, store: ArtifactStore, run_dir: Path, tracker) -> dict[str, Any]:
    from mixmerge.data import load_tasks
    from mixmerge.models import resolve_base_model
    from mixmerge.stages import ensure_mixture, ensure_specialist

    started = time.time()
    where = {"host": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID")}
    want = set(cfg["strategy"]["variants"])
    base = resolve_base_model(cfg["model"], store)
    tasks = load_tasks(cfg["task"], store=store, seed=cfg["seed"])
    models = []
    if want & {"specialists", "merged"}:
        models += [ensure_specialist(cfg, store, tracker, base, t, s) for t, s in tasks.items()]
    if "mixture" in want:
        models.append(ensure_mixture(cfg, store, tracker, base, tasks))
    built = [v.name for v in models if _built_here(v.path, started)]
    reused = [v.name for v in models if v.name not in built]
    summary = {**where, "built": built, "reused": reused, "seconds": round(time.time() - started, 1),
               "artifacts": {v.name: str(v.path) for v in models}}
    job = f" (Slurm job {where['slurm_job']})" if where["slurm_job"] else ""
    log.info("prepare on %s%s: trained %s; already cached %s", where["host"], job, built or "nothing",
             reused or "nothing")
    write_json_atomic(run_dir / "prepared.json", summary)
    return summary
