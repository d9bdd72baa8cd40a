"""Hub models (the paper's bases): resolved from the local HF cache, or downloaded when online."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class ModelNotAvailableError(RuntimeError):
    """A hub model is neither cached locally nor downloadable from here."""


def cached_snapshot(hub_id: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder of ``hub_id`` if the HF cache holds one (never touches the network)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        return None


def resolve_hub_snapshot(hub_id: str, *, revision: str | None = None, allow_download: bool = True) -> Path:
    """Return a local folder for ``hub_id``; fail at once with the fix when it cannot be had."""
    local = cached_snapshot(hub_id, revision)
    if local is not None:
        log.info("model %s: using the local HF cache at %s", hub_id, local)
        return local
    how = (
        f"Fetch it on a machine with network access: `hf download {hub_id}` (or "
        f"`huggingface-cli download {hub_id}`), then copy the HF cache (~/.cache/huggingface) here, "
        f"or point model.path at a local HF folder."
    )
    if not allow_download:
        raise ModelNotAvailableError(f"model.hub_id={hub_id!r} is not in the local HF cache. {how}")
    from huggingface_hub import snapshot_download

    try:
        log.info("model %s: not cached, downloading from the hub", hub_id)
        return Path(snapshot_download(hub_id, revision=revision, allow_patterns=_WEIGHT_PATTERNS))
    except Exception as err:  # noqa: BLE001 - surface one clear message instead of a deep stack
        raise ModelNotAvailableError(
            f"model.hub_id={hub_id!r} is not in the local HF cache and could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160]}). {how}"
        ) from None


_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py", "tokenizer*"]
