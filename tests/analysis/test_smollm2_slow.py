import pytest
import torch
from safetensors.torch import load_file

from mixmerge.analysis import analyze_models
from tests.conftest import SMOLLM2_CFG as SMOLLM2


@pytest.mark.slow
def test_real_model_30_layers_scaled_task_vector(tmp_path, make_variant):
    """SmolLM2-135M: a task vector and twice it correlate perfectly, norms double, layers 0..29 found."""
    from mixmerge.cache import ArtifactStore
    from mixmerge.models import resolve_base_model

    base = resolve_base_model(SMOLLM2, ArtifactStore(tmp_path / "cache")).path
    state = load_file(str(base / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    delta = {n: 1e-3 * torch.randn(t.shape, generator=g) for n, t in state.items() if "q_proj" in n}
    del state
    one = make_variant(base, tmp_path / "one", delta)
    two = make_variant(base, tmp_path / "two", {n: 2 * d for n, d in delta.items()})
    result = analyze_models(base, {"one": one, "two": two})
    assert result.num_layers == 30
    for layer in (0, 15, 29):
        assert result.pair_stat(("one", "two"), layer) == pytest.approx(1.0, abs=1e-4)
        assert result.norm("two", layer) == pytest.approx(2 * result.norm("one", layer), rel=1e-3)
        assert result.norm("one", layer, "k_proj") == 0.0
    expected = float(torch.cat([d.reshape(-1) for d in delta.values()]).double().norm())
    assert result.norm("one") == pytest.approx(expected, rel=1e-3)
