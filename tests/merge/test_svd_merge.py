"""TSV-M, Iso-C and Iso-CTS (merge/svd_merge.py) against references written from the papers, their
identities, the fallback to task arithmetic, parameter checks and the two engines on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mixmerge.merge import svd_merge as S
from mixmerge.merge.combine import merge_tensor
from mixmerge.merge.engine import merge_folders
from mixmerge.merge.in_memory import InMemoryMerger
from mixmerge.merge.mergekit_yaml import mergekit_to_merge_cfg
from mixmerge.merge.params import resolve_params

MATRIX = "model.layers.0.mlp.up_proj.weight"


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _orthonormal(n, seed):
    q, _ = torch.linalg.qr(_rand(n, n, seed=seed))
    return q


# ---- references written from the papers, in float64 (polar factors by eigendecomposition, not SVD) ----

def ref_polar(x):
    """x (x^T x)^(-1/2) for a tall x, (x x^T)^(-1/2) x for a wide one: the closest orthonormal matrix."""
    tall = x.shape[0] >= x.shape[1]
    gram = x.T @ x if tall else x @ x.T
    evals, evecs = torch.linalg.eigh(gram)
    inv_sqrt = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    return x @ inv_sqrt if tall else inv_sqrt @ x


def ref_tsv(deltas, k):
    """Gargiulo et al. 2025, Sec. 4: U = [U_1^k ... U_T^k], S = blockdiag(S_t^k), V likewise; U_perp S V_perp^T."""
    blocks_u, blocks_s, blocks_v = [], [], []
    for d in deltas:
        u, s, vh = torch.linalg.svd(d)
        for j in range(k):
            blocks_u.append(u[:, j])
            blocks_s.append(s[j])
            blocks_v.append(vh[j])
    u_cat, v_cat = torch.stack(blocks_u, dim=1), torch.stack(blocks_v, dim=1)
    return ref_polar(u_cat) @ torch.diag(torch.stack(blocks_s)) @ ref_polar(v_cat).T


def ref_iso_c(deltas):
    """Marczak et al. 2025, Eq. for Iso-C: sigma_bar * U V^T of the summed task matrices (full rank here)."""
    total = sum(deltas)
    sigma_bar = torch.linalg.svdvals(total).mean()
    return sigma_bar * ref_polar(total)


def ref_iso_cts(deltas, k_common, per_task):
    """Marczak et al. 2025, Sec. 4.2: common top-k of the sum, each task's top directions after removing the
    common left subspace, orthogonalised, spectrum set to the mean."""
    u, s, vh = torch.linalg.svd(sum(deltas))
    us, ss, vs = [u[:, :k_common]], [s[:k_common]], [vh[:k_common].T]
    proj = torch.eye(u.shape[0], dtype=u.dtype) - u[:, :k_common] @ u[:, :k_common].T
    for d in deltas:
        ut, st, vht = torch.linalg.svd(proj @ d)
        us.append(ut[:, :per_task])
        ss.append(st[:per_task])
        vs.append(vht[:per_task].T)
    sigma_bar = torch.cat(ss).mean()
    return sigma_bar * ref_polar(torch.cat(us, dim=1)) @ ref_polar(torch.cat(vs, dim=1)).T


def _inputs(shape, n, seed=0):
    base = _rand(*shape, seed=seed)
    return base, [base + 0.1 * _rand(*shape, seed=seed + 1 + i) for i in range(n)]


def _merge(method, base, models, name=MATRIX, **cfg):
    params = resolve_params({"method": method, **cfg}, len(models))
    return merge_tensor(name, base.float(), [m.float() for m in models], params)[0].double()


@pytest.mark.parametrize("shape,n", [((12, 9), 3), ((10, 16), 2), ((8, 8), 4)])
def test_tsv_matches_the_paper(shape, n):
    base, models = _inputs(shape, n)
    deltas = [m - base for m in models]
    k = min(shape) // n
    got = _merge("tsv", base, models, **{"lambda": 0.7})
    torch.testing.assert_close(got, base + 0.7 * ref_tsv(deltas, k), rtol=1e-4, atol=1e-5)


def test_tsv_rank_fraction_and_weights_match_the_paper():
    base, models = _inputs((12, 10), 2, seed=5)
    weights = [0.8, 0.2]  # shares: task t enters as T w_t / sum w = 1.6, 0.4
    deltas = [c * (m - base) for c, m in zip([1.6, 0.4], models, strict=True)]
    got = _merge("tsv", base, models, weights=weights, tsv_rank_fraction=0.3)
    torch.testing.assert_close(got, base + ref_tsv(deltas, 3), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,n", [((12, 9), 3), ((7, 15), 2)])
def test_iso_c_matches_the_paper(shape, n):
    base, models = _inputs(shape, n, seed=2)
    got = _merge("iso_c", base, models, **{"lambda": 1.3})
    torch.testing.assert_close(got, base + 1.3 * ref_iso_c([m - base for m in models]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,n,fraction,sizes", [((20, 24), 2, 0.8, (16, 2)), ((15, 12), 3, 0.5, (6, 2)),
                                                    ((12, 12), 2, 0.0, (0, 6))])
def test_iso_cts_matches_the_paper(shape, n, fraction, sizes):
    assert S.iso_cts_sizes(min(shape), n, fraction) == sizes
    base, models = _inputs(shape, n, seed=3)
    got = _merge("iso_cts", base, models, common_space_fraction=fraction)
    torch.testing.assert_close(got, base + ref_iso_cts([m - base for m in models], *sizes), rtol=1e-4, atol=1e-5)


def test_iso_cts_sizes_follow_the_authors_rounding():
    assert S.iso_cts_sizes(10, 3, 0.8) == (7, 1)  # 8 common leave 2, rounded to one per task: 7 common
    assert S.iso_cts_sizes(576, 2, 0.8) == (460, 58)
    assert S.iso_cts_sizes(7, 2, 0.0) == (1, 3)  # round(3.5) = 4 would not fit: capped at r // T
    assert S.iso_cts_sizes(9, 2, 1.0) == (9, 0)


# ---- identities ----

@pytest.mark.parametrize("shape,n,rank,fraction", [((8, 8), 2, 4, None), ((12, 9), 3, 3, None),
                                                   ((12, 9), 3, 2, 0.25), ((9, 14), 2, 3, 0.4)])
def test_tsv_of_orthogonal_tasks_within_the_kept_rank_is_task_arithmetic(shape, n, rank, fraction):
    """Mutually orthogonal task matrices whose whole rank is kept: decorrelation changes nothing and
    TSV-M is their sum, i.e. task arithmetic."""
    left, right = _orthonormal(shape[0], 11), _orthonormal(shape[1], 12)
    base = _rand(*shape, seed=13)
    deltas = []
    for t in range(n):
        cols = slice(t * rank, (t + 1) * rank)
        spectrum = torch.linspace(2.0, 0.5, rank, dtype=torch.float64) * (t + 1)
        deltas.append(left[:, cols] @ torch.diag(spectrum) @ right[:, cols].T)
    models = [base + d for d in deltas]
    got = _merge("tsv", base, models, tsv_rank_fraction=fraction, **{"lambda": 0.6})
    ta = _merge("task_arithmetic", base, models, weights=[1.0] * n, **{"lambda": 0.6})
    torch.testing.assert_close(got, ta, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(9, 6), (5, 11), (7, 7)])
def test_iso_c_of_one_task_keeps_its_singular_vectors_and_flattens_its_spectrum(shape):
    base, (model,) = _inputs(shape, 1, seed=7)
    u, s, vh = torch.linalg.svd(model - base, full_matrices=False)
    merged = _merge("iso_c", base, [model], **{"lambda": 0.4}) - base
    # In the task's own singular bases the merge is diagonal with every entry alpha * mean(sigma).
    torch.testing.assert_close(u.T @ merged @ vh.T, 0.4 * s.mean() * torch.eye(min(shape), dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.linalg.svdvals(merged), torch.full((min(shape),), 0.4 * float(s.mean()),
                                                                        dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_tsv_with_a_zero_share_keeps_only_the_other_tasks_directions():
    """A weight of 0 removes the task's singular values, not its place in the decorrelation: with
    orthogonal tasks that is exactly the other task's matrix."""
    left, right = _orthonormal(8, 21), _orthonormal(10, 22)
    base = _rand(8, 10, seed=23)
    d0 = left[:, :4] @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ right[:, :4].T
    d1 = left[:, 4:] @ torch.diag(torch.tensor([1.0, 0.7, 0.4, 0.2], dtype=torch.float64)) @ right[:, 4:8].T
    got = _merge("tsv", base, [base + d0, base + d1], weights=[1.0, 0.0])
    torch.testing.assert_close(got, base + 2 * d0, rtol=1e-5, atol=1e-5)  # share of task 0: T w / sum w = 2


def test_closest_orthogonal_retries_in_float64_when_float32_lapack_fails(monkeypatch):
    """Iso-CTS on SmolLM2-135M hit LAPACK's "failed to converge" in float32 on one stacked matrix: the
    Procrustes step then decomposes it in float64 and returns the float32 orthonormal factor."""
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    expected = S.closest_orthogonal(x.double()).float()
    real_svd = torch.linalg.svd

    def flaky_svd(a, *args, **kwargs):
        if a.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real_svd(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", flaky_svd)
    got = S.closest_orthogonal(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got.T @ got, torch.eye(5), rtol=0, atol=1e-5)
    monkeypatch.setattr(torch.linalg, "svd", lambda a, *args, **kwargs: flaky_svd(a.float(), *args, **kwargs))
    with pytest.raises(torch.linalg.LinAlgError):  # a failure in float64 too is not hidden
        S.closest_orthogonal(x.double())


def test_iso_cts_with_the_whole_rank_common_is_iso_c():
    base, models = _inputs((10, 12), 3, seed=9)
    torch.testing.assert_close(_merge("iso_cts", base, models, common_space_fraction=1.0),
                               _merge("iso_c", base, models), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", S.KINDS)
@pytest.mark.parametrize("name,shape", [("model.layers.0.input_layernorm.weight", (16,)),
                                        ("model.layers.1.self_attn.q_proj.bias", (16,)),
                                        ("model.embed_tokens.weight", (40, 8)), ("lm_head.weight", (40, 8)),
                                        ("model.layers.0.mlp.up_proj.weight", (2, 8))])  # min(shape) < T = 3
def test_tensors_that_are_not_rewritable_matrices_are_task_arithmetic(method, name, shape):
    base, models = _inputs(shape, 3, seed=4)
    weights, lam = [0.5, 0.2, 0.3], 1.4
    got = _merge(method, base, models, name=name, weights=weights, **{"lambda": lam})
    ta = _merge("task_arithmetic", base, models, name=name, weights=weights, normalize=True, **{"lambda": lam})
    torch.testing.assert_close(got, ta, rtol=0, atol=0)
    assert not S.svd_applies(name, shape, 3)


@pytest.mark.parametrize("method", S.KINDS)
def test_equal_weights_are_the_papers_unweighted_merge(method):
    base, models = _inputs((9, 12), 2, seed=6)
    a = _merge(method, base, models, weights=[0.3, 0.3])
    torch.testing.assert_close(a, _merge(method, base, models, weight=0.5), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a, _merge(method, base, models, weights=[2.0, 2.0]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", S.KINDS)
def test_lambda_scales_the_merged_task_matrix(method):
    base, models = _inputs((9, 12), 2, seed=8)
    one = _merge(method, base, models) - base
    torch.testing.assert_close(_merge(method, base, models, **{"lambda": 2.5}) - base, 2.5 * one,
                               rtol=1e-5, atol=1e-6)


# ---- parameters ----

@pytest.mark.parametrize("cfg,match", [
    ({"method": "tsv", "tsv_rank_fraction": 0.6}, r"merge.tsv_rank_fraction=0.6 is outside \(0, 1/2\]"),
    ({"method": "tsv", "tsv_rank_fraction": 0}, r"merge.tsv_rank_fraction=0.0 is outside"),
    ({"method": "tsv", "tsv_rank_fraction": "x"}, r"merge.tsv_rank_fraction='x' is not a number"),
    ({"method": "iso_cts", "common_space_fraction": 1.2}, r"merge.common_space_fraction=1.2 is outside \[0, 1\]"),
    ({"method": "iso_c", "common_space_fraction": 0.5}, r"merge.common_space_fraction is a setting of "
                                                         r"merge.method=iso_cts, not of iso_c"),
    ({"method": "ties", "tsv_rank_fraction": 0.5}, r"merge.tsv_rank_fraction is a setting of merge.method=tsv"),
    ({"method": "tsv", "density": 0.5}, r"merge.density is not a parameter of merge.method=tsv"),
    ({"method": "iso_c", "normalize": False}, r"merge.normalize=false: merge.method=iso_c"),
    ({"method": "iso_cts", "rescale": True}, r"merge.rescale=true: merge.method=iso_cts"),
    ({"method": "tsv", "weights": [0.5, -0.1]}, r"merge.weights\[1\]=\[-0.1\] is negative"),
    ({"method": "iso_c", "weights": [0.0, 0.0]}, r"merge.weights sum to 0"),
])
def test_bad_parameters_name_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        resolve_params(cfg, 2)


def test_mergekit_yaml_cannot_name_an_svd_merge():
    for method in S.KINDS:
        doc = {"merge_method": method, "base_model": "b", "models": [{"model": "x", "parameters": {"weight": 1}}]}
        with pytest.raises(ValueError, match=rf"merge_method='{method}' is not a mergekit method.*merge={method}"):
            mergekit_to_merge_cfg(doc, "cfg.yml")


# ---- the engines on the tiny model ----

@pytest.mark.parametrize("method", S.KINDS)
def test_streamed_and_in_memory_merges_match_the_kernel(method, tiny_base, specialists, tmp_path):
    cfg = {"method": method, "weights": [0.6, 0.4], "lambda": 0.9}
    report = merge_folders(cfg, tiny_base, specialists, tmp_path / "out")
    assert report["parameters"]["method"] == method and report["reference_url"].startswith("https://arxiv.org/")
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    base_sd = load_file(str(tiny_base / "model.safetensors"))
    spec_sd = [load_file(str(s / "model.safetensors")) for s in specialists]
    params = resolve_params(cfg, 2)
    rewritten = 0
    for name, b in base_sd.items():
        expected, _ = merge_tensor(name, b, [s[name] for s in spec_sd], params)
        torch.testing.assert_close(merged[name].float(), expected, rtol=0, atol=0)
        rewritten += S.svd_applies(name, b.shape, 2)
    assert rewritten >= 14  # 2 layers x 7 projections; embeddings and norms stay task arithmetic

    model = InMemoryMerger(tiny_base, specialists)
    for name, tensor, _ in model.merged_tensors(cfg):
        torch.testing.assert_close(tensor, merged[name].float(), rtol=2e-5, atol=2e-6)
    # A second trial with other weights and lambda (TSV-M reuses its cached singular vectors).
    assert len(model._tsv_cache) == (rewritten if method == "tsv" else 0)
    trial = {"method": method, "weights": [0.1, 0.9], "lambda": 1.7}
    params = resolve_params(trial, 2)
    for name, tensor, _ in model.merged_tensors(trial):
        expected, _ = merge_tensor(name, base_sd[name], [s[name] for s in spec_sd], params)
        torch.testing.assert_close(tensor, expected, rtol=2e-5, atol=2e-6)


def test_a_nan_input_is_named_before_the_svd_fails(tiny_base, specialists, tmp_path):
    import shutil

    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    shutil.copytree(specialists[1], bad)
    state = load_file(str(bad / "model.safetensors"))
    state["model.layers.1.mlp.down_proj.weight"][2, 3] = float("nan")
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"NaN/Inf in input: tensor 'model.layers.1.mlp.down_proj.weight' of model 1"):
        merge_folders({"method": "iso_c"}, tiny_base, [specialists[0], bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_standalone_merge_reads_the_group_and_refuses_bad_keys_before_work(tiny_base, specialists, tmp_path):
    from mixmerge.merge.standalone import run

    out = tmp_path / "merged"
    report = run({"method": "iso_cts", "base": str(tiny_base), "models": [str(s) for s in specialists],
                  "output": str(out), "common_space_fraction": 0.5, "weight": 0.5})
    assert report["parameters"]["common_space_fraction"] == 0.5
    assert json.loads((out / "merge_report.json").read_text())["method"] == "iso_cts"
    with pytest.raises(ValueError, match=r"merge.tsv_rank_fraction=0.9 is outside"):
        run({"method": "tsv", "base": str(tiny_base), "models": [str(s) for s in specialists],
             "output": str(tmp_path / "never"), "tsv_rank_fraction": 0.9})
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("method", S.KINDS)
def test_standalone_merge_of_each_method(method, tiny_base, specialists, tmp_path):
    from mixmerge.merge.standalone import run

    report = run({"method": method, "base": str(tiny_base), "models": [str(s) for s in specialists],
                  "output": str(tmp_path / "merged"), "weight": 0.5, "lambda": 1.0})
    assert report["method"] == method and (tmp_path / "merged" / "model.safetensors").is_file()


# ---- wiring: the config group, the run's config check, the search spaces ----

def _compose(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


@pytest.mark.parametrize("method", S.KINDS)
def test_the_run_checks_the_svd_keys_before_any_work(method):
    from mixmerge.config import ConfigError, validate_config

    validate_config(_compose(["model=tiny", f"merge={method}"]))
    bad = {"tsv": "merge.tsv_rank_fraction=0.75", "iso_c": "merge.lambda=oops",
           "iso_cts": "merge.common_space_fraction=-0.1"}[method]
    with pytest.raises((ConfigError, ValueError), match=bad.split("=")[0].replace(".", r"\.")):
        validate_config(_compose(["model=tiny", f"merge={method}", bad]))
    with pytest.raises((ConfigError, ValueError), match=rf"merge.method={method}"):
        validate_config(_compose(["strategy=merge", f"merge={method}", "+merge.density=0.5"]))


def test_a_mergekit_file_naming_an_svd_merge_is_refused_by_the_config_check(tmp_path):
    from mixmerge.merge import validate_merge_config

    path = tmp_path / "cfg.yml"
    path.write_text("merge_method: tsv\nbase_model: b\nmodels:\n  - model: x\n    parameters: {weight: 1}\n")
    with pytest.raises(ValueError, match=r"merge_method='tsv' is not a mergekit method"):
        validate_merge_config({"method": "ties", "from_mergekit": str(path)})


@pytest.mark.parametrize("method", S.KINDS)
def test_search_space_is_valid_and_its_corners_resolve(method):
    from omegaconf import OmegaConf

    from hydra_plugins.mixmerge_optuna_sweeper._impl import parse_params
    from mixmerge.sweep import space as sp
    from tests.conftest import REPO

    node = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "hparams_search" / "space" / f"{method}.yaml"))
    specs, _ = parse_params([f"{k}={v}" for k, v in node[method]["params"].items()])
    sp.validate_space(specs, [], node[method].get("domains", {}), "tpe")
    for corner in ("low", "high"):
        cfg = {"method": method, **{s.name.removeprefix("merge."): getattr(s, corner) for s in specs}}
        resolve_params(cfg, 2)


@pytest.mark.slow
def test_compare_and_standalone_runs_of_the_three_methods(tmp_path):
    """`python run.py model=tiny merge=X` under strategy=compare (one multirun, the specialists trained once),
    and the standalone command on its specialists."""
    import subprocess
    import sys

    from tests.conftest import REPO

    fast = ["model=tiny", "logger=none", "trainer.max_steps=2", "task.max_train_examples=16",
            "task.max_eval_examples=8", "eval=quick", "eval.loss.limit=8", "analysis.enabled=false",
            "strategy.variants=[merged]", f"cache.root={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run([sys.executable, "run.py", "-m", "merge=tsv,iso_c,iso_cts", *fast], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    methods = set()
    for job in sorted((tmp_path / "sweep").glob("[0-9]*")):
        merged = json.loads((job / "metrics.json").read_text())["variants"]["merged"]
        assert 5.0 < merged["metrics"]["codegen/loss"] < 12.0
        methods.add(json.loads((Path(merged["artifact"]) / "merge_report.json").read_text())["method"])
    assert methods == set(S.KINDS)

    base = next(p for p in (tmp_path / "cache" / "base").iterdir() if p.is_dir())
    specs = sorted(p for p in (tmp_path / "cache" / "specialist").iterdir() if p.is_dir())
    proc = subprocess.run([sys.executable, "run.py", "-m", "strategy=merge", "merge=tsv,iso_c,iso_cts",
                           f"merge.base={base}", f"merge.models=[{specs[0]},{specs[1]}]",
                           f"merge.output={tmp_path / 'out'}/${{merge.method}}", "eval=none", "logger=none",
                           "analysis.enabled=false", f"hydra.sweep.dir={tmp_path / 'merge_sweep'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for method in S.KINDS:
        assert json.loads((tmp_path / "out" / method / "merge_report.json").read_text())["method"] == method
