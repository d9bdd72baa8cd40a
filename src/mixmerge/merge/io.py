"""Tensor I/O for merging: lazy reads from HF folders and peft adapters, streamed sharded writes.

Reading parses the safetensors header itself and reads one tensor at a time (``pread``, or a private
memory map for zero-copy views). Writing knows every output tensor's shape and dtype up front, so each
shard's header is written first and the tensor bytes are appended as they are computed: no shard is
ever held in memory. Dtypes are safetensors names ("F32", "BF16", ...); the numpy side (``array``,
``read_f32_into``, ``write_array``) never imports torch, the torch side (``view``, ``get``,
``read_into``, ``write``) imports it on first use.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from safetensors import safe_open

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
REPORT = "merge_report.json"  # written last into every merged folder: marks an earlier merge's output

# safetensors dtype -> (torch dtype name, numpy dtype holding its bytes: bfloat16 as raw uint16)
_DTYPES = {"F32": ("float32", np.float32), "F16": ("float16", np.float16), "BF16": ("bfloat16", np.uint16),
           "F64": ("float64", np.float64), "I64": ("int64", np.int64), "I32": ("int32", np.int32),
           "I16": ("int16", np.int16), "I8": ("int8", np.int8), "U8": ("uint8", np.uint8), "BOOL": ("bool", np.bool_)}
_ST_BY_TORCH_NAME = {torch_name: st for st, (torch_name, _) in _DTYPES.items()}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")  # the tensors that get merged


def st_dtype(dtype) -> str:
    """The safetensors name of a torch dtype (or of a safetensors name: checked and returned)."""
    name = dtype if isinstance(dtype, str) else _ST_BY_TORCH_NAME.get(str(dtype).removeprefix("torch."))
    if name not in _DTYPES:
        raise ValueError(f"unsupported tensor dtype {dtype}")
    return name


def torch_dtype_of(st: str):
    """The torch dtype of a safetensors name: "BF16" -> torch.bfloat16 (imports torch)."""
    import torch

    return getattr(torch, _DTYPES[st][0])


def torch_name(st: str) -> str:
    """A safetensors dtype as torch and config.json spell it: "BF16" -> "bfloat16"."""
    return _DTYPES[st][0]


def is_adapter_folder(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


class _SafetensorsFile:
    """One safetensors file read with plain ``pread`` calls instead of a memory map: pages of tensors
    already merged are not kept in this process's RSS, so peak memory follows the tensors in flight."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        size = os.fstat(self.fd).st_size
        try:
            (header_len,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
            header = json.loads(os.pread(self.fd, header_len, 8))
            header.pop("__metadata__", None)
            need = 8 + header_len + max((e["data_offsets"][1] for e in header.values()), default=0)
        except (struct.error, ValueError, KeyError, TypeError, OverflowError) as err:
            os.close(self.fd)
            raise ValueError(f"{path} is not a readable safetensors file ({err}); re-save or re-download it") from None
        if size < need:  # checked before any work: a zero-copy view past the end would fail mid-merge
            os.close(self.fd)
            raise ValueError(f"{path} is truncated: its header describes {need} bytes but the file has {size}; "
                             f"re-save or re-download it")
        self.data_start = 8 + header_len
        self.entries: dict[str, dict] = header
        self._map: mmap.mmap | None = None

    def array(self, name: str) -> np.ndarray:
        """A zero-copy numpy array over the file's bytes (a private, copy-on-write memory map): no read,
        no copy (bfloat16 as its raw uint16 bits). Call ``release`` when done so the pages leave this
        process's RSS."""
        entry = self.entries[name]
        np_dtype = _DTYPES[self._dtype(name)][1]
        begin, end = entry["data_offsets"]
        if self._map is None:
            self._map = mmap.mmap(self.fd, 0, access=mmap.ACCESS_COPY)
        raw = np.frombuffer(self._map, dtype=np.uint8, count=end - begin, offset=self.data_start + begin)
        return raw.view(np_dtype).reshape(entry["shape"])

    def view(self, name: str):
        """``array`` as a torch tensor of the file's dtype (zero-copy)."""
        import torch

        raw = self.array(name)
        return torch.from_numpy(raw.reshape(-1).view(np.uint8)).view(torch_dtype_of(self._dtype(name))).reshape(raw.shape)

    def release(self, name: str) -> None:
        """Drop a viewed tensor's pages from this process (the page cache keeps them)."""
        if self._map is None:
            return
        begin, end = self.entries[name]["data_offsets"]
        first = (self.data_start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
        last = self.data_start + end
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def _dtype(self, name: str) -> str:
        dtype = self.entries[name]["dtype"]
        if dtype not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype}")
        return dtype

    def get(self, name: str):
        import torch

        out = torch.empty(self.entries[name]["shape"], dtype=torch_dtype_of(self._dtype(name)))
        self._pread_into(name, out.view(-1).view(torch.uint8).numpy())
        return out

    def read_into(self, name: str, out) -> None:
        """Fill the contiguous CPU tensor ``out`` (reused across tensors: no allocation, no page faults);
        the bytes go straight in when shape and dtype match, else through a converting copy (rows
        beyond ``out``'s are dropped: the embedding-truncation policy)."""
        entry = self.entries[name]
        if self._dtype(name) == st_dtype(out.dtype) and list(out.shape) == entry["shape"]:
            import torch

            self._pread_into(name, out.view(-1).view(torch.uint8).numpy())
        else:
            src = self.get(name)
            out.copy_(src[: out.shape[0]] if out.dim() and src.shape[0] != out.shape[0] else src)

    def read_f32_into(self, name: str, out: np.ndarray) -> None:
        """Fill the contiguous float32 array ``out`` with the tensor as float32 (rows beyond ``out``'s
        are dropped): float32 bytes go straight in; float16, bfloat16 and float64 are converted exactly
        as torch's ``.float()`` does (bfloat16 is the upper half of a float32; float64 rounds to nearest)."""
        dtype = self._dtype(name)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} is {dtype}, not a float tensor")
        if dtype == "F32" and list(out.shape) == self.entries[name]["shape"]:
            self._pread_into(name, out.reshape(-1).view(np.uint8))
            return
        src = self.array(name)
        src = src[: out.shape[0]] if out.ndim and src.shape[0] != out.shape[0] else src
        try:
            if dtype == "BF16":
                np.left_shift(src.astype(np.uint32), 16, out=out.view(np.uint32))
            else:
                out[...] = src
        finally:
            self.release(name)

    def _pread_into(self, name: str, out: np.ndarray) -> None:
        """Read the tensor's bytes into the uint8 array ``out``."""
        begin, end = self.entries[name]["data_offsets"]
        if end == begin:
            return
        view, offset = memoryview(out), self.data_start + begin
        while view.nbytes:  # pread may return less than asked for
            n = os.preadv(self.fd, [view], offset)
            if n <= 0:
                raise OSError(f"{self.path}: unexpected end of file reading {name!r}")
            view, offset = view[n:], offset + n

    def close(self) -> None:
        self._map = None  # unmapped once no view refers to it
        os.close(self.fd)


class SafetensorsFolder:
    """The tensors of an HF folder (single file or sharded index), read lazily one tensor at a time: the
    one safetensors reader of mixmerge (the merge engines and the weight analysis). A context manager."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index = self.path / WEIGHTS_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (self.path / WEIGHTS_FILE).is_file():
            files = [WEIGHTS_FILE]
        else:
            found = sorted(p.name for p in self.path.glob("*.safetensors"))
            if not found:
                raise FileNotFoundError(f"{self.path} has no safetensors weights (model.safetensors or "
                                        f"{WEIGHTS_INDEX}); save the model with safe_serialization=True")
            files = found
        self._files = [_SafetensorsFile(self.path / f) for f in files]
        self._file_of: dict[str, _SafetensorsFile] = {}
        for f in self._files:
            for name in f.entries:
                self._file_of[name] = f

    def names(self) -> list[str]:
        return list(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._file_of[name].entries[name]["shape"])

    def dtype_str(self, name: str) -> str:
        """The tensor's safetensors dtype ("F32", "BF16", ...); an unsupported one is an error naming it."""
        return self._file_of[name]._dtype(name)

    def get(self, name: str):
        return self._file_of[name].get(name)

    def read_into(self, name: str, out) -> None:
        self._file_of[name].read_into(name, out)

    def read_f32_into(self, name: str, out: np.ndarray) -> None:
        self._file_of[name].read_f32_into(name, out)

    def read_f32(self, name: str) -> np.ndarray:
        out = np.empty(self.shape(name), np.float32)
        self.read_f32_into(name, out)
        return out

    def array(self, name: str) -> np.ndarray:
        return self._file_of[name].array(name)

    def view(self, name: str):
        return self._file_of[name].view(name)

    def release(self, name: str) -> None:
        self._file_of[name].release(name)

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def __enter__(self) -> SafetensorsFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LoraAdapterSource:
    """A peft LoRA adapter seen as a full model: base tensor + (alpha/r) B @ A for adapted modules.

    The delta of a module is materialised only when that tensor is read. Tensors the adapter saves
    whole (``modules_to_save``) replace the base's.
    """

    def __init__(self, path: str | os.PathLike, base: SafetensorsFolder):
        self.path = Path(path)
        self.base = base
        cfg = json.loads((self.path / ADAPTER_CONFIG).read_text())
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"{self.path}: peft_type={cfg.get('peft_type')!r} is not supported (only LORA)")
        self.config = cfg
        weights = self.path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{self.path} has no {ADAPTER_WEIGHTS}; save the adapter with peft's "
                                    f"save_pretrained(safe_serialization=True)")
        self._handle = safe_open(str(weights), framework="pt")
        r, alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
        self._default_scale = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
        self._lora: dict[str, tuple[str, str]] = {}
        self._whole: dict[str, str] = {}
        for key in self._handle.keys():  # noqa: SIM118 - safe_open is not iterable
            target = _adapter_key_to_base(key)
            if ".lora_A." in key:
                self._lora.setdefault(target, ("", ""))
                self._lora[target] = (key, self._lora[target][1])
            elif ".lora_B." in key:
                self._lora.setdefault(target, ("", ""))
                self._lora[target] = (self._lora[target][0], key)
            elif "lora_embedding" in key or "lora_magnitude" in key:
                raise ValueError(f"{self.path}: adapter tensor {key} (embedding LoRA / DoRA) is not supported")
            else:
                self._whole[target] = key
        for target, (a, b) in self._lora.items():
            if not a or not b:
                raise ValueError(f"{self.path}: LoRA module {target} lacks its lora_A or lora_B tensor")
            if target not in base:
                raise ValueError(f"{self.path}: LoRA targets {target}, which the base model does not have")
        for target in self._whole:
            if target not in base:
                raise ValueError(f"{self.path}: adapter saves {target}, which the base model does not have")

    def _scale(self, target: str) -> float:
        pattern = self.config.get("alpha_pattern") or {}
        rank_pattern = self.config.get("rank_pattern") or {}
        if not pattern and not rank_pattern:
            return self._default_scale
        module = target.removesuffix(".weight")
        r = next((v for k, v in rank_pattern.items() if module.endswith(k)), self.config.get("r", 8))
        alpha = next((v for k, v in pattern.items() if module.endswith(k)), self.config.get("lora_alpha", 8))
        return alpha / (r ** 0.5 if self.config.get("use_rslora") else r)

    def names(self) -> list[str]:
        return self.base.names()

    def __contains__(self, name: str) -> bool:
        return name in self.base

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def dtype_str(self, name: str) -> str:
        return self.base.dtype_str(name)

    def delta(self, name: str):
        """The adapter's additive change to ``name`` (float32), or None where it changes nothing."""
        if name in self._lora:
            a_key, b_key = self._lora[name]
            a = self._handle.get_tensor(a_key).float()
            b = self._handle.get_tensor(b_key).float()
            delta = (b @ a) * self._scale(name)
            if self.config.get("fan_in_fan_out"):
                delta = delta.T
            return delta
        if name in self._whole:
            return self._handle.get_tensor(self._whole[name]).float() - self.base.get(name).float()
        return None

    def lora_targets(self) -> list[str]:
        """The base tensors the adapter changes by B A (``...q_proj.weight``)."""
        return list(self._lora)

    def whole_targets(self) -> list[str]:
        """The base tensors the adapter replaces whole (``modules_to_save``)."""
        return list(self._whole)

    def factors(self, name: str):
        """``(A, B, scale)`` of a LoRA target as stored (A: r x in, B: out x r; ΔW = scale B A)."""
        a_key, b_key = self._lora[name]
        return self._handle.get_tensor(a_key), self._handle.get_tensor(b_key), self._scale(name)

    def get(self, name: str):
        base = self.base.get(name)
        delta = self.delta(name)
        return base if delta is None else base.float() + delta

    def read_into(self, name: str, out) -> None:
        self.base.read_into(name, out)
        delta = self.delta(name)
        if delta is not None:
            out.add_(delta)

    def read_f32_into(self, name: str, out: np.ndarray) -> None:
        import torch

        self.read_into(name, torch.from_numpy(out))

    def close(self) -> None:
        del self._handle


def _adapter_key_to_base(key: str) -> str:
    """``base_model.model.model.layers.0.q_proj.lora_A.weight`` -> ``model.layers.0.q_proj.weight``."""
    name = key.removeprefix("base_model.model.")
    for marker in (".lora_A.", ".lora_B."):
        if marker in name:
            return name.split(marker)[0] + ".weight"
    return name.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")


def open_source(path: Path, base: SafetensorsFolder | None):
    """An HF folder or a peft adapter folder (which needs the base to stand on)."""
    if is_adapter_folder(path):
        if base is None:
            raise ValueError(f"{path} is a LoRA adapter; merging it needs merge.base (the model it was trained on)")
        return LoraAdapterSource(path, base)
    return SafetensorsFolder(path)


def plan_shards(entries: Sequence[tuple[str, tuple[int, ...], str]], shard_size_bytes: int):
    """Split ``(name, shape, safetensors dtype)`` entries, in order, into shards of at most
    ``shard_size_bytes`` (a tensor larger than that gets a shard of its own)."""
    shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    size = 0
    for entry in entries:
        nbytes = _nbytes(entry[1], entry[2])
        if shards[-1] and size + nbytes > shard_size_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def _nbytes(shape: Iterable[int], dtype: str) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * np.dtype(_DTYPES[dtype][1]).itemsize


class StreamingShardWriter:
    """Writes tensors, in plan order, straight into pre-headed safetensors shards plus an index."""

    def __init__(self, out_dir: Path, entries: Sequence[tuple[str, tuple[int, ...], object]],
                 shard_size_bytes: int):
        """``entries``: (name, shape, dtype) in write order; dtype a safetensors name or a torch dtype."""
        self.out_dir = Path(out_dir)
        self.shards = plan_shards([(n, tuple(s), st_dtype(d)) for n, s, d in entries], shard_size_bytes)
        n = len(self.shards)
        self.files = [WEIGHTS_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._order = [(si, e) for si, shard in enumerate(self.shards) for e in shard]
        self._pos = 0
        self._fh = None
        self._shard = -1
        self.total_bytes = sum(_nbytes(e[1], e[2]) for _, e in self._order)

    def _open(self, si: int) -> None:
        if self._fh is not None:
            self._fh.close()
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in self.shards[si]:
            nbytes = _nbytes(shape, dtype)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._fh = open(self.out_dir / self.files[si], "wb")  # noqa: SIM115 - closed in _open/close
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)
        self._shard = si

    def write(self, name: str, tensor) -> None:
        """Append a torch tensor (its dtype must be the planned one)."""
        import torch

        data = tensor.detach().contiguous().cpu()
        self._append(name, tuple(data.shape), _ST_BY_TORCH_NAME.get(str(data.dtype).removeprefix("torch.")),
                     data.view(torch.uint8).reshape(-1).numpy())

    def write_array(self, name: str, array: np.ndarray) -> None:
        """Append a numpy array holding the planned dtype's bytes (bfloat16: raw uint16)."""
        _, (_, _, dtype) = self._order[self._pos]
        got = dtype if array.dtype == _DTYPES[dtype][1] else str(array.dtype)
        self._append(name, tuple(array.shape), got, np.ascontiguousarray(array).reshape(-1).view(np.uint8))

    def _append(self, name: str, shape: tuple[int, ...], dtype: str | None, data: np.ndarray) -> None:
        si, (expected, want_shape, want_dtype) = self._order[self._pos]
        if name != expected or shape != tuple(want_shape) or dtype != want_dtype:
            raise RuntimeError(f"writer expected {expected} {want_shape} {want_dtype}, got {name} {shape} {dtype}")
        if si != self._shard:
            self._open(si)
        self._fh.write(data.data if data.size else b"")  # no copy
        self._pos += 1

    def close(self) -> None:
        if self._pos != len(self._order):
            raise RuntimeError(f"writer closed after {self._pos} of {len(self._order)} tensors")
        if self._fh is not None:
            self._fh.close()
        if len(self.files) > 1:
            weight_map = {e[0]: self.files[si] for si, e in self._order}
            (self.out_dir / WEIGHTS_INDEX).write_text(json.dumps(
                {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, indent=2) + "\n")


# Files copied from the base (or the first full model) next to the merged weights.
_SIDE_FILE_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".py", ".tiktoken")
_NOT_COPIED = {WEIGHTS_INDEX, ADAPTER_CONFIG, REPORT, "manifest.json"}


def copy_side_files(src: Path, out_dir: Path) -> list[str]:
    """Copy config, generation config and tokenizer files (everything but the weights)."""
    copied = []
    for p in sorted(Path(src).iterdir()):
        if p.is_file() and p.suffix in _SIDE_FILE_SUFFIXES and p.name not in _NOT_COPIED:
            shutil.copy2(p, out_dir / p.name)
            copied.append(p.name)
    return copied
