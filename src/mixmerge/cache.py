"""Content-addressed artifact store.

Every expensive product (converted base, specialist, mixture, merged model, evaluation) lives in
``<root>/<kind>/<key>/`` where ``key`` hashes exactly the config that determines it plus the keys of its
inputs. A folder only ever appears by an atomic ``rename`` of a finished build, so a crash leaves nothing
that a later run could mistake for complete. A file lock per key stops two processes building the same
artifact at once; the second one waits and then reuses the first one's result.

A cached artifact is checked cheaply each time it is used (the manifest parses and names this artifact,
every file it lists has its recorded size, every safetensors file's header is intact and its tensors fit
in the file); a broken one fails naming its folder and the fix, or, with ``rebuild_broken``, is built
again and swapped in only once the new build is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from mixmerge.files import publish_folder, write_json_atomic

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


class BrokenArtifactError(RuntimeError):
    """A cached artifact whose manifest or files are damaged; the message names its folder and the fix."""


def _safetensors_header(path: Path) -> tuple[bytes, dict]:
    """The raw header (length prefix included) and its parsed JSON; ValueError when it cannot be read."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError("shorter than a safetensors header (8 bytes)")
        (length,) = struct.unpack("<Q", prefix)
        size = os.fstat(f.fileno()).st_size
        if 8 + length > size:
            raise ValueError(f"its header claims {length} bytes but the file has {size}")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except ValueError:
        raise ValueError("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return prefix + raw, header


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unusable (bad header, tensors past its end), or None; reads the header only."""
    try:
        raw, header = _safetensors_header(path)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError) as err:
        return f"{path.name}: {err}" if isinstance(err, ValueError) else f"{path.name}: malformed header"
    need, size = len(raw) + max(ends, default=0), path.stat().st_size
    if need > size:
        return f"{path.name} is truncated: its tensors need {need} bytes, the file has {size}"
    return None


def describe_files(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {bytes, [header_sha256]}}`` of a finished build, recorded in its manifest."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST):
        entry: dict[str, Any] = {"bytes": path.stat().st_size}
        if path.suffix == ".safetensors":
            with contextlib.suppress(ValueError):
                entry["header_sha256"] = hashlib.sha256(_safetensors_header(path)[0]).hexdigest()[:16]
        out[path.relative_to(folder).as_posix()] = entry
    return out


def artifact_problem(path: Path, kind: str, key: str) -> tuple[dict | None, str | None]:
    """``(manifest, None)`` for an intact artifact folder, ``(None, why)`` for a broken one.

    Cheap: one JSON parse, a ``stat`` per file and each safetensors header; no tensor data is read.
    Manifests written before sizes were recorded (no ``files``) are still checked for safetensors damage.
    """
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"{MANIFEST} cannot be read ({type(err).__name__}: {err})"
    if not isinstance(manifest, dict):
        return None, f"{MANIFEST} is not a JSON object"
    for field, want in (("kind", kind), ("key", key)):
        if manifest.get(field) != want:
            return None, f"{MANIFEST} has {field}={manifest.get(field)!r}, expected {want!r}"
    files = manifest.get("files")
    if files is not None and not isinstance(files, dict):
        return None, f"{MANIFEST} field 'files' is not a mapping"
    for rel, entry in (files or {}).items():
        file = path / rel
        if not file.is_file():
            return None, f"{rel} is missing"
        size = file.stat().st_size
        if isinstance(entry, dict) and size != entry.get("bytes", size):
            return None, f"{rel} has {size} bytes, {entry['bytes']} when it was built (truncated or overwritten)"
    listed = [path / rel for rel in files] if files is not None else list(path.rglob("*.safetensors"))
    for file in (f for f in listed if f.suffix == ".safetensors"):
        problem = _safetensors_problem(file)
        if problem is not None:
            return None, problem
        recorded = ((files or {}).get(file.relative_to(path).as_posix()) or {}).get("header_sha256")
        if recorded and hashlib.sha256(_safetensors_header(file)[0]).hexdigest()[:16] != recorded:
            return None, f"{file.name}: its header changed since it was built"
    return manifest, None


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

    def __init__(self, root: str | os.PathLike, *, rebuild_broken: bool = False):
        self.root = Path(root).expanduser().resolve()
        # cache.rebuild_broken: a damaged artifact is built again instead of failing the run.
        self.rebuild_broken = rebuild_broken

    def path_for(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def lookup(self, kind: str, key: str, *, label: str | None = None) -> Artifact | None:
        """The finished artifact, None on a miss; BrokenArtifactError when it exists but is damaged."""
        path = self.path_for(kind, key)
        if not (path / MANIFEST).exists():
            return None
        manifest, problem = artifact_problem(path, kind, key)
        if problem is not None:
            raise BrokenArtifactError(
                f"cached {label or kind} artifact {path} is broken: {problem}. Fix: rerun with "
                f"cache.rebuild_broken=true to build it again (the broken folder is replaced only once the new "
                f"build is complete), or delete the folder: rm -rf {path}")
        return Artifact(kind, key, path, manifest, reused=True)

    def _usable(self, kind: str, key: str, label: str) -> Artifact | None:
        """:meth:`lookup`, except that a broken artifact counts as a miss when ``rebuild_broken`` is set."""
        try:
            return self.lookup(kind, key, label=label)
        except BrokenArtifactError as err:
            if not self.rebuild_broken:
                raise
            log.warning("%s; rebuilding it (cache.rebuild_broken=true)", str(err).split(". Fix:")[0])
            return None

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
        found = None if refresh else self._usable(kind, key, label)
        if found is not None:
            log.info("cache hit: %s %s -> %s", label, key, found.path)
            return found
        (self.root / kind).mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / kind / f".{key}.lock")):
            found = None if refresh else self._usable(kind, key, label)  # another process may have built it meanwhile
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
                "files": describe_files(work),  # sizes and safetensors header hashes, checked on every use
            }
            write_json_atomic(work / MANIFEST, manifest)
            final = self.path_for(kind, key)
            publish_folder(work, final)  # a refresh swaps the new artifact in as a whole, then drops the old
            log.info("built %s %s in %.1f s -> %s", label, key, manifest["build_seconds"], final)
            return Artifact(kind, key, final, manifest, reused=False)
