"""lm-eval loader for ``pydoc_next.yaml``: the items in the JSONL next to this file, as the test split.

Loaded by lm-eval from the YAML's ``!function`` tag (by file path, wherever the working directory is).
"""

from __future__ import annotations

import json
from pathlib import Path

DATA_FILE = Path(__file__).with_name("pydoc_next.jsonl")


def load(**_metadata):
    """A ``DatasetDict`` with one ``test`` split; lm-eval passes the task metadata, which we do not need."""
    import datasets

    rows = [json.loads(line) for line in DATA_FILE.read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
