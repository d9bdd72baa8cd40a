"""Content-addressed artifact store.

Every expensive product (converted base, specialist, mixture, merged model, evaluation) lives in
``<root>/<kind>/<key>/`` where ``key`` hashes exactly the config that determines it plus the keys of its
inputs. A folder only ever appears by an atomic ``rename`` of a finished build, so a crash leaves nothing
that a later run could mistake for complete. A file lock per key stops two processes building the same
artifact at once; the second one waits and then reuses the first one's result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

# write_json_atomic lives in mixmerge.files; still importable from here for merge/engine.py until it switches.
from mixmerge.files import write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Bump when the layout or meaning of artifacts changes, so old caches are not reused by mistake.
STORE_VERSION = 1


def canonical_json(obj: Any) -> str:
    """A stable text form of a config: sorted keys, no whitespace, floats as Python prints them."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(kind: str, config: Mapping[str, Any], inputs: Mapping[str, str] | None = None) -> str:
    """Hash of what determines an artifact: its kind, its config and its inputs' keys."""
    payload = {"v": STORE_VERSION, "kind": kind, "config": config, "inputs": dict(inputs or {})}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "lightning", "peft", "safetensors", "mixmerge"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


@dataclass(frozen=True)
class Artifact:
    """A finished artifact: its folder, its key and its manifest."""

    kind: str
    key: str
    path: Path
    manifest: dict[str, Any]
    reused: bool


class ArtifactStore:
    """Builds each artifact once per content key and hands back the cached folder afterwards."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def path_for(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def lookup(self, kind: str, key: str) -> Artifact | None:
        path = self.path_for(kind, key)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            return None
        return Artifact(kind, key, path, json.loads(manifest_path.read_text()), reused=True)

    def get_or_build(
        self,
        kind: str,
        config: Mapping[str, Any],
        build: Callable[[Path], Mapping[str, Any] | None],
        *,
        inputs: Mapping[str, str] | None = None,
        resumable: bool = False,
        label: str | None = None,
        refresh: bool = False,
    ) -> Artifact:
        """Return the artifact for ``(kind, config, inputs)``, calling ``build(work_dir)`` on a miss.

        ``build`` writes the artifact's files into ``work_dir`` and may return extra manifest fields.
        With ``resumable=True`` a work folder left by an interrupted build is handed back to ``build``
        (so it can resume from its checkpoints); otherwise it is wiped first. ``refresh=True`` builds
        even on a hit and replaces the stored artifact (as a whole, when the new one is complete).
        """
        key = content_key(kind, config, inputs)
        label = label or kind
        found = None if refresh else self.lookup(kind, key)
        if found is not None:
            log.info("cache hit: %s %s -> %s", label, key, found.path)
            return found
        (self.root / kind).mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / kind / f".{key}.lock")):
            found = None if refresh else self.lookup(kind, key)  # another process may have built it meanwhile
            if found is not None:
                log.info("cache hit (built by another process): %s %s", label, key)
                return found
            work = self.root / kind / f".{key}.partial"
            if work.exists() and not resumable:
                shutil.rmtree(work)
            elif work.exists():
                log.info("resuming interrupted build of %s from %s", label, work)
            work.mkdir(parents=True, exist_ok=True)
            log.info("cache miss: building %s %s", label, key)
            started = time.time()
            extra = build(work) or {}
            manifest = {
                "kind": kind,
                "key": key,
                "config": json.loads(canonical_json(config)),
                "inputs": dict(inputs or {}),
                "versions": library_versions(),
                "created_unix": time.time(),
                "build_seconds": round(time.time() - started, 3),
                **dict(extra),
            }
            write_json_atomic(work / MANIFEST, manifest)
            final = self.path_for(kind, key)
            old = final.with_name(f".{final.name}.old") if final.exists() else None
            if old is not None:  # refresh: swap the new artifact in, then drop the old one
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(work, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            log.info("built %s %s in %.1f s -> %s", label, key, manifest["build_seconds"], final)
            return Artifact(kind, key, final, manifest, reused=False)
