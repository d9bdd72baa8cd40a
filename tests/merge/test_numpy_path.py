"""The CPU task-vector path runs on numpy and never imports torch: the standalone command's start-up
drops torch's ~1 s. Its dtype conversions (inputs to float32, the result to bfloat16/float16) must be
exactly torch's, and the command must really run without torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mixmerge.merge import fused as F
from mixmerge.merge import merge_folders
from mixmerge.merge.io import SafetensorsFolder, StreamingShardWriter

ROOT = Path(__file__).resolve().parents[2]

# Runs run.py with every ``import torch`` refused: the merge must finish without it.
_NO_TORCH = """
import runpy, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch must not be imported by a CPU task-vector merge")
sys.meta_path.insert(0, Refuse())
sys.argv = ["run.py", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("method", ["ties", "della", "linear"])
def test_standalone_cpu_merge_runs_without_torch(method, tiny_base, specialists, tmp_path):
    out = tmp_path / "merged"
    cmd = [sys.executable, "-c", _NO_TORCH, "strategy=merge", f"merge={method}", f"merge.base={tiny_base}",
           f"merge.models=[{specialists[0]},{specialists[1]}]", "merge.weights=[0.5,0.5]",
           *(["merge.density=0.5"] if method != "linear" else []),
           f"merge.output={out}", "eval=none", "logger=none", "analysis.enabled=false",
           f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = tmp_path / "ref"
    density = {"density": 0.5} if method != "linear" else {}
    merge_folders({"method": method, "weights": [0.5, 0.5], **density}, tiny_base, specialists, ref)
    got, want = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)


@pytest.mark.parametrize(("weights", "normalize"), [([0.3, 0.9, 0.2], True), ([0.37, -0.41, 1.1], False)])
def test_linear_equals_the_reference_bit_for_bit(weights, normalize, tiny_base, specialists, tmp_path):
    from mixmerge.merge import kernels as K

    models = [*specialists, tiny_base]
    merge_folders({"method": "linear", "weights": weights, "normalize": normalize}, None, models, tmp_path / "m")
    got = load_file(str(tmp_path / "m" / "model.safetensors"))
    states = [load_file(str(p / "model.safetensors")) for p in models]
    for name, t in got.items():
        want = K.linear_average([s[name].float() for s in states], weights, normalize)
        assert torch.equal(t, want), name


def _save_as(src: Path, out: Path, dtype: torch.dtype) -> Path:
    """A copy of the HF folder ``src`` with every float tensor stored in ``dtype``."""
    import shutil

    shutil.copytree(src, out)
    state = load_file(str(out / "model.safetensors"))
    save_file({n: t.to(dtype) if t.is_floating_point() else t for n, t in state.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_read_f32_into_converts_as_torch(dtype, tiny_base, tmp_path):
    folder = SafetensorsFolder(_save_as(tiny_base, tmp_path / "m", dtype))
    try:
        for name in folder.names():
            want = folder.get(name).float()
            got = folder.read_f32(name)
            assert np.array_equal(got.view(np.int32), want.numpy().view(np.int32)), name
            if want.dim() == 2:  # the embedding-truncation policy: the first rows only
                part = np.empty((want.shape[0] - 3, *want.shape[1:]), np.float32)
                folder.read_f32_into(name, part)
                assert np.array_equal(part, want[:-3].numpy()), name
    finally:
        folder.close()


@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_merge_as_their_float32_values(in_dtype, tiny_base, specialists, tmp_path):
    """bf16/f16 inputs are widened exactly: the merge equals that of the same values stored as float32."""
    half = [_save_as(p, tmp_path / f"half{i}", in_dtype) for i, p in enumerate([tiny_base, *specialists])]
    wide = [_save_as(p, tmp_path / f"wide{i}", torch.float32) for i, p in enumerate(half)]
    cfg = {"method": "della", "weights": [0.6, 0.4], "density": 0.5, "epsilon": 0.1, "dtype": "float32"}
    merge_folders(cfg, half[0], half[1:], tmp_path / "from_half")
    merge_folders(cfg, wide[0], wide[1:], tmp_path / "from_wide")
    got = load_file(str(tmp_path / "from_half" / "model.safetensors"))
    want = load_file(str(tmp_path / "from_wide" / "model.safetensors"))
    assert all(torch.equal(got[n], want[n]) for n in want)


@pytest.mark.parametrize("out_dtype", ["bfloat16", "float16"])
def test_output_dtype_rounds_as_torch(out_dtype, tiny_base, specialists, tmp_path):
    cfg = {"method": "ties", "weights": [0.5, 0.5], "density": 0.5}
    merge_folders({**cfg, "out_dtype": out_dtype}, tiny_base, specialists, tmp_path / "cast")
    merge_folders({**cfg, "dtype": "float32"}, tiny_base, specialists, tmp_path / "f32")
    got = load_file(str(tmp_path / "cast" / "model.safetensors"))
    want = load_file(str(tmp_path / "f32" / "model.safetensors"))
    for name, t in want.items():
        assert got[name].dtype == getattr(torch, out_dtype)
        assert torch.equal(got[name], t.to(getattr(torch, out_dtype))), name


def test_bfloat16_rounding_edge_cases():
    """Ties to even at every halfway point, overflow to inf, signed zeros, subnormals; any NaN stays NaN."""
    halfway = (np.arange(0, 1 << 16, 7, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 3.4028235e38, 1e-45, -1e-40, 1.0 + 2**-8], np.float32)
    x = np.concatenate([halfway[np.isfinite(halfway)], special])
    got = np.empty(x.size, np.uint16)
    F.to_bfloat16_bits(x, got)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(got, want)
    nan = np.empty(1, np.uint16)
    F.to_bfloat16_bits(np.array([np.nan], np.float32), nan)
    assert np.isnan(torch.from_numpy(nan.view(np.int16)).view(torch.bfloat16).float()).all()


def test_writer_refuses_an_array_of_another_dtype(tmp_path):
    writer = StreamingShardWriter(tmp_path, [("w", (2, 3), "BF16")], 10**6)
    with pytest.raises(RuntimeError, match="writer expected w \\(2, 3\\) BF16, got w \\(2, 3\\) float32"):
        writer.write_array("w", np.zeros((2, 3), np.float32))
    writer.write_array("w", np.zeros((2, 3), np.uint16))
    writer.close()
    assert load_file(str(tmp_path / "model.safetensors"))["w"].dtype == torch.bfloat16
