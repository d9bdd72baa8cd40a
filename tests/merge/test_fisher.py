"""Diagonal Fisher on the tiny model, saved and used by the Fisher merge."""

from __future__ import annotations

import pytest
import torch

from mixmerge.merge import InMemoryMerger, merge_folders
from mixmerge.merge.fisher import compute_diagonal_fisher, save_fisher
from mixmerge.merge.io import SafetensorsFolder


def _batches(seed, n=2):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = torch.randint(0, 1000, (2, 8), generator=gen)
        yield {"input_ids": ids, "labels": ids}


def test_fisher_is_mean_squared_gradient(tiny_base):
    from mixmerge.models import load_model

    model = load_model(tiny_base)
    fisher = compute_diagonal_fisher(model, list(_batches(0)))
    # reference: the same average, by hand, for one parameter
    name = "model.layers.0.mlp.down_proj.weight"
    ref = torch.zeros_like(dict(model.named_parameters())[name])
    for batch in _batches(0):
        model.zero_grad()
        model(**batch).loss.backward()
        ref += dict(model.named_parameters())[name].grad ** 2
    torch.testing.assert_close(fisher[name], ref / 2, rtol=1e-4, atol=1e-12)
    assert all(bool((f >= 0).all()) for f in fisher.values())
    assert float(fisher[name].sum()) > 0


def test_fisher_merge_streaming_and_in_memory(tiny_base, specialists, tmp_path):
    from mixmerge.models import load_model

    paths = []
    for i, spec in enumerate(specialists):
        fisher = compute_diagonal_fisher(load_model(spec), list(_batches(i)))
        paths.append(str(save_fisher(fisher, tmp_path / f"fisher{i}")))
    cfg = {"method": "fisher", "weights": [0.5, 0.5], "fisher_paths": paths}
    merge_folders(cfg, tiny_base, specialists, tmp_path / "out")
    src = SafetensorsFolder(tmp_path / "out")
    a, b = SafetensorsFolder(specialists[0]), SafetensorsFolder(specialists[1])
    fa, fb = SafetensorsFolder(paths[0]), SafetensorsFolder(paths[1])
    name = "model.layers.1.self_attn.v_proj.weight"
    num = (fa.get(name) + 1e-6) * a.get(name) + (fb.get(name) + 1e-6) * b.get(name)
    ref = num / (fa.get(name) + fb.get(name) + 2e-6)
    torch.testing.assert_close(src.get(name), ref, rtol=1e-5, atol=1e-6)
    model = load_model(tiny_base)
    InMemoryMerger(tiny_base, specialists).merge_into(model, cfg)
    torch.testing.assert_close(model.state_dict()[name], src.get(name), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method,needs", [("fisher", "merge.fisher_paths"), ("regmean", "merge.gram_paths"),
                                          ("regmean_plus", "merge.gram_paths")])
def test_data_aware_merge_without_task_data_names_what_it_needs(method, needs):
    """A data-aware merge of models that are not specialists of tasks with known training data is refused
    before any statistic is computed, naming the key that would supply them."""
    from mixmerge import stages

    models = [stages.Variant("specialist/codegen", None, "a"), stages.Variant("merged", None, "b")]
    fill = stages._with_fisher if method == "fisher" else (
        lambda cfg, store, ms, data: stages._with_grams(cfg, store, None, ms, data))
    for task_data in (None, {"codegen": object()}):
        with pytest.raises(ValueError, match=rf"merge={method} needs .*{needs}.*got \['specialist/codegen', 'merged'\]"):
            fill({"merge": {"method": method}}, None, models, task_data)
