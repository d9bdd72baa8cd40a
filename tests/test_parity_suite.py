"""The parity suite's own logic (``make parity`` itself needs mergekit and is no part of ``make test``): the
case list is well formed and reads as intended, and the classifier labels synthetic results right."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mixmerge.merge.mergekit_yaml import mergekit_to_merge_cfg
from mixmerge.merge.params import resolve_params
from mixmerge.merge.registry import METHODS
from parity.cases import CASES, PLACEHOLDERS, RANDOM_METHODS, SHARED_METHODS
from parity.classify import (
    IDENTICAL,
    MISMATCH,
    REFUSED,
    STATISTICAL,
    TIES,
    TOLERANCE,
    Outcome,
    classify,
    cut_ties,
    variance_cut_ties,
)
from parity.run import _substitute


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_case_list_is_well_formed():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert {c.method for c in CASES} >= set(SHARED_METHODS)
    for case in CASES:
        assert case.random == (case.method in RANDOM_METHODS), case.name
        models = [m["model"] for m in case.doc.get("models", [])]
        assert all(part in PLACEHOLDERS for m in models for part in m.split("+")), case.name


@pytest.mark.parametrize("case", [c for c in CASES if c.method in METHODS], ids=lambda c: c.name)
def test_mixmerge_reads_each_case_as_labelled(case):
    """Every case mixmerge knows reads into a merge config, except the ``refuse:`` ones, which raise."""
    paths = {p: Path(f"/models/{p.lower()}") for p in PLACEHOLDERS}
    doc = _substitute(case.doc, paths)
    assert not any(s in PLACEHOLDERS for s in _strings(doc))
    if case.name.startswith("refuse:"):
        with pytest.raises(ValueError):
            _read(doc)
    else:
        params = _read(doc)
        assert params.method.name == case.method


def _read(doc):
    """What ``merge.from_mergekit`` does before touching a file: read the YAML, resolve the parameters."""
    cfg = mergekit_to_merge_cfg(doc)
    return resolve_params(cfg, len(cfg["models"]))


def _model(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(64, 64, generator=gen).to(dtype), "b.bias": torch.randn(64, generator=gen).to(dtype)}


def test_classifier_deterministic_labels():
    x = _model()
    assert classify(Outcome(x), Outcome(dict(x)), random=False).label == IDENTICAL
    nudged = dict(x, **{"a.weight": torch.nextafter(x["a.weight"], torch.tensor(float("inf")))})
    v = classify(Outcome(x), Outcome(nudged), random=False)
    assert v.label == TOLERANCE and "(a.weight), 98 % of entries differ" in v.detail  # 4096 of 4160
    off = dict(x, **{"b.bias": x["b.bias"] + 1e-3})
    assert classify(Outcome(x), Outcome(off), random=False).label == MISMATCH
    assert classify(Outcome(x), Outcome({"a.weight": x["a.weight"]}), random=False).label == MISMATCH
    low = {k: v.to(torch.bfloat16) for k, v in x.items()}
    assert classify(Outcome(x), Outcome(low), random=False).label == MISMATCH  # dtypes differ


def test_classifier_refusals():
    x = _model()
    assert classify(Outcome(error="no weight"), Outcome(error="ValueError: no weight"), random=False).label == REFUSED
    assert classify(Outcome(error="boom"), Outcome(x), random=False).label == MISMATCH
    assert classify(Outcome(x), Outcome(error="boom"), random=False).label == MISMATCH


def _dare(base, delta_scale, keep, seed):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in base.items():
        d = delta_scale * torch.randn(t.shape, generator=gen)
        mask = torch.rand(t.shape, generator=gen) < keep
        out[name] = t + torch.where(mask, d / keep, 0.0)
    return out


def test_classifier_random_methods_by_statistics():
    base = {"w": torch.randn(200, 200, generator=torch.Generator().manual_seed(3))}
    a, b = _dare(base, 0.01, 0.5, seed=1), _dare(base, 0.01, 0.5, seed=2)
    assert classify(Outcome(a), Outcome(b), random=True, base=base).label == STATISTICAL
    assert classify(Outcome(a), Outcome(a), random=True, base=base).label == STATISTICAL
    c = _dare(base, 0.01, 0.6, seed=2)  # another keep rate
    assert classify(Outcome(a), Outcome(c), random=True, base=base).label == MISMATCH
    d = {"w": base["w"] + 1.2 * (b["w"] - base["w"])}  # same mask, deltas 20 % larger
    assert classify(Outcome(a), Outcome(d), random=True, base=base).label == MISMATCH


def test_classifier_accepts_differences_only_at_tied_cuts():
    """TIES keeps k of several entries tied at its threshold: which ones is a sort's order (mergekit's
    argsort is not stable); a difference there is 'identical up to ties', anywhere else a MISMATCH."""
    delta = torch.tensor([[0.5, -0.2, 0.2, 0.1], [0.2, 0.05, -0.3, 0.01]])
    tied = cut_ties([delta], "magnitude", [0.5], [0.0])  # k = 4: 0.5, -0.3 and two of the three 0.2s
    assert tied.tolist() == [[False, True, True, False], [True, False, False, False]]
    assert not cut_ties([delta], "magnitude", [0.25], [0.0]).any()  # k = 2: no tie at the cut
    x = {"w": delta}
    y = {"w": delta.clone()}
    y["w"][0, 2] = 0.0  # another tied entry dropped instead
    assert classify(Outcome(x), Outcome(y), random=False, ties=lambda name: tied).label == TIES
    assert classify(Outcome(x), Outcome(y), random=False).label == MISMATCH
    z = {"w": delta.clone()}
    z["w"][0, 0] = 0.0  # the largest entry dropped: no tie explains it
    assert classify(Outcome(x), Outcome(z), random=False, ties=lambda name: tied).label == MISMATCH
    bread = cut_ties([delta], "breadcrumbs", [0.5], [0.125])  # n=8: bottom 3, keep 4 -> upper cut at 7
    assert not bread.any()


def test_variance_cut_ties_marks_sce_ties_at_the_top_k_cut():
    """SCE keeps the int(fraction * nonzero) entries of largest variance across the task vectors: where
    that cut falls among equal variances (common in bfloat16), which entries survive is topk's order."""
    a = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0])
    b = torch.tensor([4.0, 2.0, 2.0, 2.0, 0.0])  # variances 4, 1, 1, 1, 0: four nonzero
    assert variance_cut_ties([a, b], 0.5).tolist() == [False, True, True, True, False]  # k = 2 cuts the 1s
    assert not variance_cut_ties([a, b], 0.25).any()  # k = 1: the 4 alone, no tie
    assert not variance_cut_ties([a, b], 1.0).any()  # everything kept
