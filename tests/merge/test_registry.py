"""The method table: every row's sparsifier has a kernel, defaults live in the rows, and a new sparsifier
is one kernel + one SPARSIFIERS row + one method row (it then runs in both engines)."""

from __future__ import annotations

import torch

from mixmerge.merge import InMemoryMerger, merge_folders, resolve_params
from mixmerge.merge import combine as C
from mixmerge.merge import registry as R
from mixmerge.merge.io import SafetensorsFolder


def test_every_sparsifier_of_the_table_has_a_kernel():
    assert {m.sparsify for m in R.METHODS.values()} - {None} <= set(C.SPARSIFIERS)


def test_defaults_come_from_the_row():
    assert resolve_params({"method": "della"}, 2).epsilons == [0.15, 0.15]
    assert resolve_params({"method": "breadcrumbs"}, 2).gammas == [0.01, 0.01]
    assert resolve_params({"method": "ties"}, 2).epsilons == [0.0, 0.0]
    assert resolve_params({"method": "ties"}, 2).normalize is True  # mergekit's default for TIES


def _keep_positive(delta, params, i, key):
    """A toy sparsifier: keep the positive entries of each task vector."""
    return torch.where(delta > 0, delta, torch.zeros_like(delta))


def test_a_new_sparsifier_is_a_kernel_and_two_rows(monkeypatch, tiny_base, specialists, tmp_path):
    monkeypatch.setitem(C.SPARSIFIERS, "positive", _keep_positive)
    monkeypatch.setitem(R.METHODS, "positive_ta", R.MergeMethod("positive_ta", "gta", "positive"))
    cfg = {"method": "positive_ta", "density": 0.5, "weights": [0.5, 0.5]}
    merge_folders(cfg, tiny_base, specialists, tmp_path / "out")
    base, out = SafetensorsFolder(tiny_base), SafetensorsFolder(tmp_path / "out")
    models = [SafetensorsFolder(s) for s in specialists]
    name = "model.layers.0.mlp.up_proj.weight"
    b = base.get(name).float()
    want = b + sum(0.5 * (m.get(name).float() - b).clamp(min=0) for m in models)
    torch.testing.assert_close(out.get(name).float(), want, rtol=0, atol=1e-6)
    merger = InMemoryMerger(tiny_base, specialists)
    in_memory = {n: t for n, t, _ in merger.merged_tensors(resolve_params(cfg, 2))}
    torch.testing.assert_close(in_memory[name], want, rtol=0, atol=1e-6)
