"""Reading dataset rows: local JSONL/JSON/Parquet files, or hub datasets through ``datasets``.

Hub access never hangs offline: when ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` is set, or huggingface.co
is unreachable (a 3 s probe), ``datasets`` runs in offline mode, so only the local HF cache is used and a
missing dataset fails at once with an error naming its id and how to fetch it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HUB_HOST = "huggingface.co"


class DatasetNotAvailableError(RuntimeError):
    """A hub dataset is neither in the local cache nor downloadable."""


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a local ``.jsonl``/``.json``/``.parquet`` file as dicts."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".jsonl", ".jsonl.gz"):
        import gzip

        opener = gzip.open if suffix.endswith(".gz") else open
        with opener(path, "rt") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text())
        return data if isinstance(data, list) else data.get("data", [])
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ValueError(f"data file {str(path)!r}: use .jsonl, .jsonl.gz, .json or .parquet")


def _env_offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "TRUE", "YES", "ON")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_datasets():
    """Run ``datasets`` cache-only for the duration (its flags are read at import, so set them directly)."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, getattr(datasets.config, "HF_DATASETS_OFFLINE", None),
             hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def read_hub_split(dataset_id: str, config: str | None, split: str, *, revision: str | None = None,
                   offline: bool | None = None) -> Iterator[dict[str, Any]]:
    """Rows of one split of a hub dataset (downloaded once into the HF cache by ``datasets``)."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise DatasetNotAvailableError("source=hub needs the `datasets` package: pip install datasets") from err
    if offline is None:
        offline = _env_offline() or not hub_reachable()
    context = _offline_datasets() if offline else contextlib.nullcontext()
    name = f"{dataset_id}" + (f" (config {config})" if config else "")
    try:
        with context:
            data = datasets.load_dataset(dataset_id, config, split=split, revision=revision)
    except Exception as err:
        how = ("it is not in the local HF cache and the hub is unreachable or HF_DATASETS_OFFLINE is set; "
               f"fetch it once on a machine with network: python -c \"import datasets; "
               f"datasets.load_dataset('{dataset_id}'{', ' + repr(config) if config else ''}, split='{split}')\" "
               "(or point task.tasks.<name>.data_files at local copies in the same schema)"
               if offline else f"loading failed: {err}")
        raise DatasetNotAvailableError(f"dataset {name}, split {split!r}: {how}") from err
    yield from data
