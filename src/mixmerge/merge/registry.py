"""The table of merge methods: one row per method, names and defaults as in mergekit.

Adding a method that the generalized task-arithmetic kernel covers is one row here plus one YAML in
``conf/merge/`` (which extends ``_base.yaml``); a new sparsifier adds its kernel in ``kernels.py`` and a
row in ``combine.SPARSIFIERS`` (4 files); a method with its own math adds a kernel in ``kernels.py``, a
``kind`` and its branch in ``combine.merge_whole``, the one dispatch both engines use (4 files). A
search space for sweeps is ``conf/hparams_search/space/<method>.yaml`` plus its name in
``merge_optuna.yaml``'s list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MergeMethod:
    name: str
    kind: str  # "gta" (generalized task arithmetic), "linear", "slerp", "model_stock", "fisher", "correlation", or
    # one of mergekit's newer methods: "sce", "nuslerp", "multislerp", "karcher", "nearswap"
    sparsify: str | None = None  # None, "magnitude", "random", "della", "breadcrumbs"
    consensus: str | None = None  # None or "sum"
    default_normalize: bool = False
    default_rescale: bool = False
    needs_base: bool = True
    min_models: int = 1
    max_models: int | None = None
    reference_url: str = ""
    default_epsilon: float = 0.0  # DELLA's spread of keep probabilities (mergekit: 0.15)
    default_gamma: float = 0.0  # Breadcrumbs' dropped outlier fraction (mergekit: 0.01)
    in_mergekit: bool = True  # False: mergekit 0.1.5 has no such merge_method, so a mergekit YAML naming it is refused
    default_common_space_fraction: float | None = None  # Iso-CTS's common-subspace share of the rank (paper: 0.8)

    @property
    def task_vector_family(self) -> bool:
        """Linear and the task-vector methods: mergekit requires a weight for every model they merge."""
        return self.kind in ("linear", "gta")

    @property
    def randomized(self) -> bool:
        return self.sparsify in ("random", "della")

    @property
    def svd_based(self) -> bool:
        """TSV-M, Iso-C, Iso-CTS: per weight matrix from the task matrices' SVDs (``svd_merge.py``)."""
        return self.kind in ("tsv", "iso_c", "iso_cts")


_ROWS = (
    MergeMethod("linear", "linear", default_normalize=True, needs_base=False,
                reference_url="https://arxiv.org/abs/2203.05482"),
    MergeMethod("task_arithmetic", "gta", reference_url="https://arxiv.org/abs/2212.04089"),
    MergeMethod("ties", "gta", "magnitude", "sum", default_normalize=True,
                reference_url="https://arxiv.org/abs/2306.01708"),
    MergeMethod("dare_ties", "gta", "random", "sum", default_rescale=True,
                reference_url="https://arxiv.org/abs/2311.03099"),
    MergeMethod("dare_linear", "gta", "random", None, default_rescale=True,
                reference_url="https://arxiv.org/abs/2311.03099"),
    MergeMethod("breadcrumbs", "gta", "breadcrumbs", None, default_gamma=0.01,
                reference_url="https://arxiv.org/abs/2312.06795"),
    MergeMethod("breadcrumbs_ties", "gta", "breadcrumbs", "sum", default_gamma=0.01,
                reference_url="https://arxiv.org/abs/2312.06795"),
    MergeMethod("della", "gta", "della", "sum", default_normalize=True, default_rescale=True, default_epsilon=0.15,
                reference_url="https://arxiv.org/abs/2406.11617"),
    MergeMethod("della_linear", "gta", "della", None, default_rescale=True, default_epsilon=0.15,
                reference_url="https://arxiv.org/abs/2406.11617"),
    MergeMethod("slerp", "slerp", needs_base=False, min_models=2, max_models=2,
                reference_url="https://en.wikipedia.org/wiki/Slerp"),
    MergeMethod("model_stock", "model_stock", min_models=2, reference_url="https://arxiv.org/abs/2403.19522"),
    MergeMethod("fisher", "fisher", needs_base=False, reference_url="https://arxiv.org/abs/2111.09832"),
    # Ours: per tensor, task arithmetic discounted by correlation, or TIES where signs conflict
    # (correlation_rule.py); the row's sparsifier and consensus are the TIES it falls back to.
    MergeMethod("correlation", "correlation", "magnitude", "sum", default_normalize=True,
                reference_url="https://arxiv.org/abs/2306.01708"),
    # mergekit's newer methods (merge/mergekit_methods.py; their settings in merge/method_options.py)
    MergeMethod("sce", "sce", reference_url="https://arxiv.org/abs/2408.07990"),
    MergeMethod("nuslerp", "nuslerp", needs_base=False, min_models=2, max_models=2,
                reference_url="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md"),
    MergeMethod("multislerp", "multislerp", needs_base=False,
                reference_url="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea"),
    MergeMethod("karcher", "karcher", needs_base=False, reference_url="https://arxiv.org/abs/2603.04972"),
    MergeMethod("nearswap", "nearswap", needs_base=False, min_models=2, max_models=2,
                reference_url="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001"),
    # RegMean's closed form per linear layer (merge/regmean.py) from Gram matrices (merge/gram.py); RegMean++
    # differs only in its Grams (inputs from the merged model's earlier layers).
    MergeMethod("regmean", "regmean", needs_base=False, reference_url="https://arxiv.org/abs/2212.09849"),
    MergeMethod("regmean_plus", "regmean", needs_base=False, reference_url="https://arxiv.org/abs/2508.03121"),
    # The SVD merges (kinds tsv, iso_c, iso_cts; svd_merge.py): normalize=True, the weights are the tasks' shares.
    MergeMethod("tsv", "tsv", default_normalize=True, in_mergekit=False,
                reference_url="https://arxiv.org/abs/2412.00081"),
    MergeMethod("iso_c", "iso_c", default_normalize=True, in_mergekit=False,
                reference_url="https://arxiv.org/abs/2502.04959"),
    MergeMethod("iso_cts", "iso_cts", default_normalize=True, in_mergekit=False, default_common_space_fraction=0.8,
                reference_url="https://arxiv.org/abs/2502.04959"),
)

METHODS: dict[str, MergeMethod] = {row.name: row for row in _ROWS}
# Bumped whenever the same parameters would give other merged weights, so cached merges are not reused
# across it. 2: random masks from a counter-based hash (kernels.counter_uniform) instead of torch.rand.
# 3: breadcrumbs keeps exactly int(density*n) entries at tied magnitudes; a SLERP t gradient gives the
# final norm and lm_head its first value (mergekit 0.1.5), not its last.
# 4: merge.dtype is the compute dtype (mergekit's): a bfloat16/float16 merge rounds every step in it (SCE too).
ALGORITHM_VERSION = 4
# The study's names for mergekit's methods: `merge=dare` is DARE with TIES sign election.
ALIASES: dict[str, str] = {"dare": "dare_ties"}


def get_method(name: str) -> MergeMethod:
    """The row for ``name`` (aliases resolved), or a ValueError listing the known methods."""
    canonical = ALIASES.get(name, name)
    if canonical not in METHODS:
        known = ", ".join(sorted([*METHODS, *ALIASES]))
        raise ValueError(f"merge.method={name!r} is not a known merge method; use one of: {known}")
    return METHODS[canonical]
