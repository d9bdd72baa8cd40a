"""The in-memory merger on CUDA (the torch reference kernels, task vectors resident on the GPU) gives the
CPU merger's numbers (the fused numba kernels): same random masks, same thresholds, float32 roundings."""

from __future__ import annotations

import pytest
import torch

from mixmerge.merge import InMemoryMerger, resolve_params

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run with -m gpu)")]

CONFIGS = {
    "linear": {"method": "linear", "weights": [0.6, 0.5]},
    "task_arithmetic": {"method": "task_arithmetic", "weights": [0.6, 0.5], "lambda": 0.8},
    "ties": {"method": "ties", "weights": [0.6, 0.5], "density": 0.4},
    "dare_ties": {"method": "dare_ties", "weights": [0.6, 0.5], "density": 0.5, "seed": 3},
    "della": {"method": "della", "weights": [0.6, 0.5], "density": 0.5, "epsilon": 0.1, "seed": 3},
    "breadcrumbs": {"method": "breadcrumbs", "weights": [0.6, 0.5], "density": 0.8, "gamma": 0.05},
    "slerp": {"method": "slerp", "t": [0.2, 0.9]},
    "model_stock": {"method": "model_stock"},
}


@pytest.fixture(scope="module")
def mergers(tiny_base, specialists):
    return InMemoryMerger(tiny_base, specialists), InMemoryMerger(tiny_base, specialists, device="cuda")


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_cuda_merge_matches_cpu(method, mergers):
    cpu, gpu = mergers
    params = resolve_params(CONFIGS[method], 2)
    on_cpu = {name: t for name, t, _ in cpu.merged_tensors(params)}
    on_gpu = {name: t for name, t, _ in gpu.merged_tensors(params)}
    assert on_gpu.keys() == on_cpu.keys() and on_cpu
    for name, t in on_gpu.items():
        assert t.device.type == "cuda"
        torch.testing.assert_close(t.cpu(), on_cpu[name], rtol=1e-5, atol=1e-6, msg=f"{method}: {name}")
        if method in ("dare_ties", "della", "ties", "breadcrumbs"):  # the same entries survive
            assert torch.equal(t.cpu() == cpu.base[name], on_cpu[name] == cpu.base[name]), name


def test_merge_into_a_cuda_model(mergers, tiny_base):
    from mixmerge.models import load_model

    cpu, gpu = mergers
    params = resolve_params(CONFIGS["ties"], 2)
    model_cpu, model_gpu = load_model(tiny_base), load_model(tiny_base).to("cuda")
    cpu.merge_into(model_cpu, params)
    gpu.merge_into(model_gpu, params)
    got, want = model_gpu.state_dict(), model_cpu.state_dict()
    for name, t in want.items():
        torch.testing.assert_close(got[name].cpu(), t, rtol=1e-5, atol=1e-6, msg=name)
