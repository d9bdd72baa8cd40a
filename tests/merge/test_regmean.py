"""RegMean / RegMean++: the closed form against a direct least-squares solve, its identities, the Gram
statistics on the tiny model (one file per block, bounded memory) and the merge engines."""

from __future__ import annotations

import pytest
import torch

from mixmerge.merge import InMemoryMerger, merge_folders, resolve_params
from mixmerge.merge import kernels as K
from mixmerge.merge.gram import (
    block_grams,
    capture_block_inputs,
    compute_grams,
    compute_regmean_plus_grams,
    decoder_blocks,
    layer_file,
)
from mixmerge.merge.io import SafetensorsFolder
from mixmerge.merge.regmean import reduce_off_diagonal, regmean_linear, regmean_tensor, weighted_average


def _data(seed, n_models=3, d_in=6, d_out=4, rows=(20, 9, 30)):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(rows[i], d_in, generator=gen, dtype=torch.float64) for i in range(n_models)]
    ws = [torch.randn(d_out, d_in, generator=gen) for _ in range(n_models)]
    return xs, ws


def test_closed_form_is_the_least_squares_fit_of_every_models_outputs():
    """alpha=1: minimise sum_i c_i ||X_i W^T - X_i W_i^T||^2, solved as one stacked least-squares problem."""
    xs, ws = _data(0)
    coefs = [0.5, 0.2, 0.3]
    grams = [x.T @ x / x.shape[0] for x in xs]  # per-token means, as merge/gram.py stores them
    merged = regmean_linear(ws, grams, coefs, alpha=1.0)
    # reference: rows sqrt(c_i / n_i) X_i stacked, targets the same rows times W_i^T
    a = torch.cat([(c / x.shape[0]) ** 0.5 * x for c, x in zip(coefs, xs, strict=True)])
    b = torch.cat([(c / x.shape[0]) ** 0.5 * x @ w.double().T for c, x, w in zip(coefs, xs, ws, strict=True)])
    ref = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(merged.double(), ref, rtol=1e-5, atol=1e-6)
    # and it is a better fit than the average
    def loss(w):
        return sum(c * ((x @ (w.double() - wi.double()).T) ** 2).mean() for c, x, wi in zip(coefs, xs, ws, strict=True))
    assert float(loss(merged)) < float(loss(weighted_average(ws, coefs)))


def test_alpha_shrinks_off_diagonal_terms_and_keeps_the_diagonal():
    xs, _ = _data(1)
    g = xs[0].T @ xs[0]
    r = reduce_off_diagonal(g, 0.25)
    torch.testing.assert_close(torch.diagonal(r), torch.diagonal(g))
    off = ~torch.eye(g.shape[0], dtype=torch.bool)
    torch.testing.assert_close(r[off], 0.25 * g[off])


def test_alpha_below_one_is_least_squares_on_the_reduced_grams():
    """The paper's alpha: the same closed form on alpha G + (1 - alpha) diag(G)."""
    xs, ws = _data(2)
    grams = [x.T @ x for x in xs]
    reduced = [reduce_off_diagonal(g, 0.6) for g in grams]
    lhs, rhs = sum(reduced), sum(r @ w.double().T for r, w in zip(reduced, ws, strict=True))
    ref = torch.linalg.solve(lhs, rhs).T
    torch.testing.assert_close(regmean_linear(ws, grams, [1, 1, 1], alpha=0.6).double(), ref, rtol=1e-5, atol=1e-6)


def test_identical_grams_give_the_weighted_average():
    xs, ws = _data(3)
    g = xs[0].T @ xs[0]
    for alpha in (1.0, 0.9, 0.0):
        torch.testing.assert_close(regmean_linear(ws, [g, g, g], [1, 1, 1], alpha), sum(ws) / 3, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(regmean_linear(ws, [g, g, g], [2, 1, 1], alpha),
                                   (2 * ws[0] + ws[1] + ws[2]) / 4, rtol=1e-5, atol=1e-6)


def test_alpha_zero_weights_each_input_column_by_its_squared_norm():
    """Diagonal Grams: W*[:, j] = sum_i c_i G_i[j, j] W_i[:, j] / sum_i c_i G_i[j, j], a Fisher-like
    per-column weighting (``kernels.fisher_weighted_average`` with the Gram's diagonal as the Fisher of
    every entry of column j)."""
    xs, ws = _data(4)
    grams = [x.T @ x for x in xs]
    merged = regmean_linear(ws, grams, [1, 1, 1], alpha=0.0)
    fishers = [torch.diagonal(g).float().expand_as(w) for g, w in zip(grams, ws, strict=True)]
    torch.testing.assert_close(merged, K.fisher_weighted_average(ws, fishers, [1, 1, 1], floor=0.0),
                               rtol=1e-5, atol=1e-6)


def test_one_specialist_comes_back_unchanged_and_dead_features_keep_the_average():
    xs, ws = _data(5)
    g = xs[0].T @ xs[0]
    torch.testing.assert_close(regmean_linear([ws[0]], [g], [1.0], 0.9), ws[0], rtol=1e-5, atol=1e-6)
    # feature 0 never active in any model: the system is singular there; that column keeps the average
    dead = [x.clone() for x in xs]
    for x in dead:
        x[:, 0] = 0
    merged = regmean_linear(ws, [x.T @ x for x in dead], [1, 1, 1], 1.0)
    assert torch.isfinite(merged).all()
    torch.testing.assert_close(merged[:, 0], sum(w[:, 0] for w in ws) / 3, rtol=1e-4, atol=1e-5)


def test_other_tensors_are_averaged_and_bad_settings_refused():
    a, b = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(regmean_tensor([a, b], None, [0.5, 0.5], 0.9), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="merge.alpha"):
        resolve_params({"method": "regmean", "alpha": 1.5}, 2)
    with pytest.raises(ValueError, match="non-negative"):
        resolve_params({"method": "regmean", "weights": [1.0, -0.5]}, 2)
    with pytest.raises(ValueError, match="gram_paths"):
        resolve_params({"method": "regmean", "gram_paths": ["a"]}, 2)
    with pytest.raises(ValueError, match="merge.gram_batches=0"):
        resolve_params({"method": "regmean", "gram_batches": 0}, 2)


def _batches(seed, n=3, pad_last=True):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, 1000, (2, 7), generator=gen)
        mask = torch.ones_like(ids)
        if pad_last and i == n - 1:
            mask[1, 4:] = 0  # right padding: these tokens must not count
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_grams_match_forward_hooks_on_the_whole_model_and_skip_padding(tiny_base):
    """Block by block equals one plain forward pass with hooks on every linear (the reference)."""
    from mixmerge.models import load_model

    model = load_model(tiny_base)
    batches = _batches(0)
    ref_sums, ref_counts = {}, {}

    def hook_for(name):
        def hook(module, args, output):
            mask = current["mask"]
            rows = args[0][mask].double()
            ref_sums[name] = ref_sums.get(name, 0) + rows.T @ rows
            ref_counts[name] = ref_counts.get(name, 0) + rows.shape[0]
        return hook

    current = {}
    handles = [m.register_forward_hook(hook_for(f"{n}.weight")) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in n]
    with torch.no_grad():
        for b in batches:
            current["mask"] = b["attention_mask"].bool()
            model(**b, use_cache=False)
    for h in handles:
        h.remove()
    inputs = capture_block_inputs(model, batches)
    got = {}
    for layer, block in enumerate(decoder_blocks(model)):
        got.update(block_grams(block, inputs, f"model.layers.{layer}."))
        from mixmerge.merge.gram import run_block
        inputs = run_block(block, inputs)
    assert set(got) == set(ref_sums) and len(got) == 14  # 2 blocks x q,k,v,o,gate,up,down
    for name, s in ref_sums.items():
        assert ref_counts[name] == 2 * 7 * 3 - 3  # three padding tokens left out
        torch.testing.assert_close(got[name].double(), s / ref_counts[name], rtol=1e-4, atol=1e-6)


def test_grams_are_written_one_file_per_block_as_each_block_finishes(tiny_base, tmp_path):
    """Memory stays bounded: block l's file exists (and only block l's Grams are held) when block l is
    done, before the next block runs; the folder appears only when complete."""
    from mixmerge.models import load_model

    model = load_model(tiny_base)
    out = tmp_path / "grams"
    seen = []

    def on_layer(layer):
        tmp = next(p for p in tmp_path.iterdir() if p.name.startswith(".grams.tmp"))
        seen.append(sorted(p.name for p in tmp.iterdir()))
        assert not out.exists()

    compute_grams(model, _batches(1), out, on_layer=on_layer)
    assert seen == [[layer_file(0)], [layer_file(0), layer_file(1)]]
    with SafetensorsFolder(out) as f:
        names = f.names()
        assert len(names) == 14 and f.shape("model.layers.1.mlp.down_proj.weight") == (128, 128)
        q, k = f.get("model.layers.0.self_attn.q_proj.weight"), f.get("model.layers.0.self_attn.k_proj.weight")
        torch.testing.assert_close(q, k)  # same input, stored for each weight
        gate, up = f.get("model.layers.0.mlp.gate_proj.weight"), f.get("model.layers.0.mlp.up_proj.weight")
        torch.testing.assert_close(gate, up)
        assert not torch.allclose(q, gate, rtol=1e-3)  # a freed input's memory reused must not pass for it
        assert torch.allclose(q, q.T) and float(torch.linalg.eigvalsh(q.double()).min()) > -1e-6


@pytest.fixture(scope="module")
def gram_folders(tiny_base, specialists, tmp_path_factory):
    from mixmerge.models import load_model

    root = tmp_path_factory.mktemp("grams")
    return [compute_grams(load_model(s), _batches(10 + i), root / f"g{i}") for i, s in enumerate(specialists)]


def test_regmean_merge_streaming_equals_in_memory_and_the_reference(tiny_base, specialists, gram_folders, tmp_path):
    cfg = {"method": "regmean", "alpha": 0.9, "gram_paths": [str(p) for p in gram_folders]}
    report = merge_folders(cfg, tiny_base, specialists, tmp_path / "out")
    assert report["method"] == "regmean"
    merged = SafetensorsFolder(tmp_path / "out")
    models = [SafetensorsFolder(s) for s in specialists]
    grams = [SafetensorsFolder(g) for g in gram_folders]
    name = "model.layers.1.mlp.down_proj.weight"
    ref = regmean_linear([m.get(name) for m in models], [g.get(name) for g in grams], [0.5, 0.5], 0.9)
    torch.testing.assert_close(merged.get(name), ref)
    norm = "model.layers.0.input_layernorm.weight"
    torch.testing.assert_close(merged.get(norm), (models[0].get(norm) + models[1].get(norm)) / 2)
    assert not torch.allclose(ref, (models[0].get(name) + models[1].get(name)) / 2, atol=1e-7)

    from mixmerge.models import load_model

    live = load_model(tiny_base)
    InMemoryMerger(tiny_base, specialists).merge_into(live, cfg)
    state = live.state_dict()
    for n in merged.names():
        torch.testing.assert_close(state[n], merged.get(n), rtol=1e-6, atol=1e-7)
    for f in [merged, *models, *grams]:
        f.close()


def test_regmean_without_grams_is_refused_before_any_work(tiny_base, specialists, tmp_path):
    for method in ("regmean", "regmean_plus"):
        with pytest.raises(ValueError, match=rf"merge.method={method} needs merge.gram_paths.*strategy=compare"):
            merge_folders({"method": method}, tiny_base, specialists, tmp_path / method)
        assert not (tmp_path / method).exists()
    with pytest.raises(ValueError, match="fits no linear weight"):
        merge_folders({"method": "regmean", "gram_paths": [str(specialists[0])] * 2}, tiny_base, specialists,
                      tmp_path / "wrong")


def test_regmean_plus_merges_block_by_block_on_the_merged_models_hidden_states(tiny_base, specialists, gram_folders,
                                                                                tmp_path):
    """Block 0's Grams equal RegMean's only if the embeddings agree; here they are taken after the merged
    (averaged) embeddings, and block 1's after the merged block 0. The final merge with these Grams equals
    the working model the procedure built."""
    from mixmerge.merge.combine import merge_whole
    from mixmerge.models import load_model

    params = resolve_params({"method": "regmean_plus", "alpha": 0.9}, 2)
    data = [_batches(10), _batches(11)]
    sources = [SafetensorsFolder(s) for s in specialists]
    work = load_model(tiny_base)
    outs = compute_regmean_plus_grams(
        work, sources, data, lambda n, ts, gs: merge_whole(n, None, ts, params, grams=gs), [tmp_path / "p0", tmp_path / "p1"])
    # reference for block 0 of model 1: its own block 0 on the averaged embeddings of its data
    ref_model = load_model(specialists[1])
    embed = "model.embed_tokens.weight"
    with torch.no_grad():
        ref_model.model.embed_tokens.weight.copy_((sources[0].get(embed) + sources[1].get(embed)) / 2)
    ref = block_grams(decoder_blocks(ref_model)[0], capture_block_inputs(ref_model, data[1]), "model.layers.0.")
    with SafetensorsFolder(outs[1]) as plus, SafetensorsFolder(gram_folders[1]) as plain:
        for n, g in ref.items():
            torch.testing.assert_close(plus.get(n), g, rtol=1e-5, atol=1e-7)
        down = "model.layers.1.mlp.down_proj.weight"
        assert not torch.allclose(plus.get(down), plain.get(down), rtol=1e-3)
    report = merge_folders({"method": "regmean_plus", "alpha": 0.9, "gram_paths": [str(o) for o in outs]},
                           tiny_base, specialists, tmp_path / "merged")
    assert report["method"] == "regmean_plus"
    with SafetensorsFolder(tmp_path / "merged") as merged:
        state = work.state_dict()
        for n in merged.names():
            torch.testing.assert_close(merged.get(n), state[n], rtol=1e-6, atol=1e-7)
    for s in sources:
        s.close()


def test_standalone_merge_command_refuses_regmean_without_grams_at_the_config_check():
    from mixmerge.config import ConfigError, validate_config
    from tests.test_config import _compose

    io = ["strategy=merge", "merge.base=/b", "merge.models=[/x,/y]", "merge.output=/o"]
    for method in ("regmean", "regmean_plus"):
        with pytest.raises(ConfigError, match=rf"merge={method} needs merge.gram_paths=.*strategy=compare"):
            validate_config(_compose([*io, f"merge={method}"]))
        validate_config(_compose([*io, f"merge={method}", "merge.gram_paths=[/gx,/gy]"]))
