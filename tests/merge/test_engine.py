"""The streaming engine on the tiny model: HF output, sharding, LoRA inputs, determinism, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mixmerge.merge import InMemoryMerger, merge_folders
from mixmerge.merge.io import SafetensorsFolder


def _state(folder: Path) -> dict[str, torch.Tensor]:
    src = SafetensorsFolder(folder)
    out = {n: src.get(n).clone() for n in src.names()}
    src.close()
    return out


def test_task_arithmetic_folder_matches_formula_and_loads(tiny_base, specialists, tmp_path):
    from mixmerge.models import load_model

    out = tmp_path / "merged"
    report = merge_folders({"method": "task_arithmetic", "weights": [0.6, 0.4], "lambda": 1.5},
                           tiny_base, specialists, out)
    base, a, b, merged = (_state(p) for p in (tiny_base, *specialists, out))
    for name in base:
        expected = base[name] + 1.5 * (0.6 * (a[name] - base[name]) + 0.4 * (b[name] - base[name]))
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)
    assert report["n_tensors"] == len(base) and report["kept_fraction"] > 0.99  # a few deltas round to 0
    assert json.loads((out / "merge_report.json").read_text())["method"] == "task_arithmetic"
    assert (out / "tokenizer.json").is_file()
    model = load_model(out)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()
    assert not list(tmp_path.glob(".merged.tmp-*"))


def test_sharded_output_in_bfloat16(tiny_base, specialists, tmp_path):
    out = tmp_path / "sharded"
    merge_folders({"method": "ties", "density": 0.5, "out_dtype": "bfloat16", "shard_size_mb": 0.05},
                  tiny_base, specialists, out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3
    merged = {}
    for f in files:
        merged.update(load_file(str(out / f)))
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    ref = tmp_path / "single"
    merge_folders({"method": "ties", "density": 0.5}, tiny_base, specialists, ref)
    single = _state(ref)
    for name, t in merged.items():
        torch.testing.assert_close(t, single[name].to(torch.bfloat16))


@pytest.mark.parametrize("method", ["ties", "dare_ties", "della", "slerp", "linear", "model_stock", "breadcrumbs"])
def test_streaming_equals_in_memory(method, tiny_base, specialists, tmp_path):
    from mixmerge.models import load_model

    cfg = {"method": method, "density": 0.6, "epsilon": 0.1, "weight": 0.3, "seed": 5, "t": 0.4}
    merge_folders(cfg, tiny_base, specialists, tmp_path / "m")
    streamed = _state(tmp_path / "m")
    model = load_model(tiny_base)
    report = InMemoryMerger(tiny_base, specialists).merge_into(model, cfg)
    live = model.state_dict()
    for name, t in streamed.items():
        torch.testing.assert_close(live[name], t, rtol=1e-6, atol=1e-6)
    assert report["method"] == ("dare_ties" if method == "dare" else method)


def test_dare_alias_and_randomness_depends_on_seed(tiny_base, specialists, tmp_path):
    a = merge_folders({"method": "dare", "density": 0.5, "seed": 1}, tiny_base, specialists, tmp_path / "a")
    merge_folders({"method": "dare_ties", "density": 0.5, "seed": 1}, tiny_base, specialists, tmp_path / "b")
    merge_folders({"method": "dare_ties", "density": 0.5, "seed": 2}, tiny_base, specialists, tmp_path / "c")
    sa, sb, sc = (_state(tmp_path / x) for x in "abc")
    assert a["method"] == "dare_ties"
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert not all(torch.equal(sa[n], sc[n]) for n in sa)
    assert a["kept_fraction"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("method", ["dare_ties", "della"])
def test_random_methods_deterministic_across_thread_counts(method, tiny_base, specialists, tmp_path):
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            merge_folders({"method": method, "density": 0.5, "seed": 3}, tiny_base, specialists, tmp_path / f"t{threads}")
            outs.append(_state(tmp_path / f"t{threads}"))
    finally:
        torch.set_num_threads(before)
    for other in outs[1:]:
        assert all(torch.equal(outs[0][n], other[n]) for n in outs[0])


def test_processing_order_does_not_change_random_masks(tiny_base, specialists):
    from mixmerge.merge.combine import merge_tensor
    from mixmerge.merge.params import resolve_params

    params = resolve_params({"method": "dare_ties", "density": 0.5, "seed": 3}, 2)
    base, a, b = torch.zeros(1000), torch.randn(1000), torch.randn(1000)
    first = merge_tensor("x", base, [a, b], params)[0]
    merge_tensor("y", base, [a, b], params)  # another tensor in between
    assert torch.equal(merge_tensor("x", base, [a, b], params)[0], first)
    assert not torch.equal(merge_tensor("y", base, [a, b], params)[0], first)


def test_lora_adapter_specialist(tiny_base, specialists, lora_adapter, tmp_path):
    from peft import PeftModel

    from mixmerge.models import load_model

    out = tmp_path / "lora_ta"
    merge_folders({"method": "task_arithmetic", "weights": [1.0]}, tiny_base, [lora_adapter], out)
    merged_by_peft = PeftModel.from_pretrained(load_model(tiny_base), str(lora_adapter)).merge_and_unload()
    ref = merged_by_peft.state_dict()
    merged = _state(out)
    changed = 0
    for name, t in merged.items():
        torch.testing.assert_close(t, ref[name], rtol=1e-5, atol=1e-6)
        changed += int("q_proj" in name)
    assert changed > 0
    # a mix of a LoRA specialist and a full fine-tune
    report = merge_folders({"method": "ties", "density": 0.5}, tiny_base, [lora_adapter, specialists[1]],
                           tmp_path / "mix")
    q = next(n for n in report["per_tensor"] if "q_proj" in n)
    k = next(n for n in report["per_tensor"] if "k_proj" in n)
    assert report["per_tensor"][q]["kept_fraction"] > report["per_tensor"][k]["kept_fraction"]


def test_existing_output_replaced_atomically(tiny_base, specialists, tmp_path):
    out = tmp_path / "o"
    merge_folders({"method": "linear"}, tiny_base, specialists, out)
    (out / "stale.txt").write_text("old")
    merge_folders({"method": "linear", "weight": 1.0}, tiny_base, specialists, out)
    assert not (out / "stale.txt").exists()
    merged, first = _state(out), _state(specialists[0])
    assert all(torch.equal(merged[n], first[n]) for n in merged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_in_memory_reweight_reuses_sparsified_deltas(tiny_base, specialists):
    from mixmerge.models import load_model

    merger = InMemoryMerger(tiny_base, specialists)
    model = load_model(tiny_base)
    merger.merge_into(model, {"method": "dare_ties", "density": 0.5, "weight": 0.5})
    merger.merge_into(model, {"method": "dare_ties", "density": 0.5, "weight": 0.8})
    fresh = load_model(tiny_base)
    InMemoryMerger(tiny_base, specialists, cache_sparse=False).merge_into(
        fresh, {"method": "dare_ties", "density": 0.5, "weight": 0.8})
    a, b = model.state_dict(), fresh.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    with pytest.raises(ValueError, match=r"shape mismatch|missing tensor"):
        merger.merge_into(torch.nn.Linear(2, 2), {"method": "ties"})
