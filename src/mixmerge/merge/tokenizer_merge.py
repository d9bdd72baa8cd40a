"""The output tokenizer of a merge (mergekit's ``tokenizer_source``) and the embedding rows it needs.

Policy (mergekit 0.1.5, mergekit/tokenizer/build.py and embed.py):

- ``base``: the base model's tokenizer (the first model's without a base); ``{"model": PATH}``: that folder's;
  ``union``: the base's tokenizer plus every token of the other models it lacks, in model order (regular
  tokens first, then added tokens). Tokens at an index >= a model's ``vocab_size`` count as absent.
- Each vocabulary tensor (``embed_tokens``, ``lm_head``) of each input model is re-indexed to the output
  vocabulary before the merge. A token a model lacks gets, in that model, a row chosen once per tensor:
  the one model's row when only one input model has the token; else the base's row when the base is an
  input and has it; else the mean of the rows of the models that have it; zeros when none has it.
  Then the merge method runs on the re-indexed tensors as usual.

``align_vocab_rows`` is the pure part (tensors in, tensors out); the tokenizer loading uses transformers'
fast tokenizers from local folders only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

VOCAB_TENSORS = ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings")


def is_vocab_tensor(name: str) -> bool:
    """A tensor whose rows are tokens (its vocabulary axis is 0)."""
    return any(h in name for h in VOCAB_TENSORS)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer  # imported only when a tokenizer is merged

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"tokenizer_source: cannot load the tokenizer of {path} ({exc}); every model needs its "
                         f"tokenizer files") from exc


def config_vocab_size(path: Path) -> int | None:
    cfg = Path(path) / "config.json"
    return json.loads(cfg.read_text()).get("vocab_size") if cfg.is_file() else None


@dataclass
class OutputVocabulary:
    """The output tokenizer and, per input model, output token id -> its own row (-1: absent)."""

    tokenizer: object
    vocab: dict[str, int]
    permutations: dict[str, list[int]]
    original_vocabs: dict[str, dict[str, int]] = field(default_factory=dict)
    tokens: dict[str, dict] = field(default_factory=dict)  # tokenizer.tokens: token -> {source, force}
    pad_to_multiple_of: int | None = None

    @property
    def size(self) -> int:
        """Rows of the output vocabulary tensors: the vocabulary, padded up to ``pad_to_multiple_of``."""
        n, m = len(self.vocab), self.pad_to_multiple_of
        return n if not m or n % m == 0 else (n // m + 1) * m


def _usable_vocab(tokenizer, vocab_size: int | None) -> dict[str, int]:
    vocab = tokenizer.get_vocab()
    return vocab if vocab_size is None else {t: i for t, i in vocab.items() if i < vocab_size}


def _union(donor_path: Path, donor, tokenizers: Mapping[str, object]):
    """The donor's tokenizer (reloaded, not mutated) plus the other models' tokens it lacks."""
    import tempfile

    from transformers import AutoTokenizer

    regular: dict[str, None] = {}
    added: dict[str, object] = {}
    for path, tok in tokenizers.items():
        usable = _usable_vocab(tok, config_vocab_size(Path(path)))
        added_here = {info.content: (idx, info) for idx, info in tok.added_tokens_decoder.items()}
        for t in sorted(usable, key=usable.get):  # id order (get_vocab's order is arbitrary)
            if t not in added_here:
                regular.setdefault(t, None)
        for content, (idx, info) in added_here.items():
            if content in usable and usable[content] == idx:
                added.setdefault(content, info)
    with tempfile.TemporaryDirectory() as tmp:
        donor.save_pretrained(tmp)
        out = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
    donor_vocab = donor.get_vocab()
    for t in regular:
        if t not in added and t not in donor_vocab:
            out.add_tokens(t)
    for info in added.values():
        out.add_tokens(info)
    return out


def build_output_vocabulary(source: str | Mapping[str, str], donor: Path, models: Sequence[Path],
                            tokens: Mapping[str, dict] | None = None,
                            pad_to_multiple_of: int | None = None) -> OutputVocabulary:
    """The output tokenizer for ``tokenizer_source`` (``base``, ``union`` or ``{"model": PATH}``) of a merge
    whose base (or first model) is ``donor``, and each model's row permutation; the ``tokens`` of a
    ``tokenizer:`` block are added when missing (mergekit/tokenizer/build.py)."""
    paths = list(dict.fromkeys([str(donor), *map(str, models)]))
    tokenizers = {p: load_tokenizer(Path(p)) for p in paths}
    if isinstance(source, Mapping):
        out = load_tokenizer(Path(source["model"]))
    elif source == "base":
        out = tokenizers[str(donor)]
    elif source == "union":
        out = _union(Path(donor), tokenizers[str(donor)], tokenizers)
    else:
        raise ValueError(f"tokenizer_source={source!r} must be base, union or a model folder")
    existing = set(out.get_vocab())
    for t in tokens or {}:
        if t not in existing:
            out.add_tokens(t)
            existing.add(t)
    vocab = out.get_vocab()
    perms = {}
    for p, tok in tokenizers.items():
        own = _usable_vocab(tok, config_vocab_size(Path(p)))
        perm = [-1] * len(vocab)
        for t, i in vocab.items():
            perm[i] = own.get(t, -1)
        perms[p] = perm
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError("tokenizer_source: the output tokenizer's ids are not 0..n-1; it cannot index embedding rows")
    return OutputVocabulary(out, vocab, perms, {p: tok.get_vocab() for p, tok in tokenizers.items()},
                            dict(tokens or {}), pad_to_multiple_of)


@dataclass(frozen=True)
class TokenRow:
    """A ``tokenizer.tokens`` entry resolved to the inputs: ``model`` None is a zero row, else the row
    ``row`` of input ``model`` (``row`` None: that input's own row of the token); ``force``: every input
    takes it, even one that has the token."""

    model: int | None
    row: int | None = None
    force: bool = False


def align_vocab_rows(rows: Sequence[torch.Tensor], permutations: Sequence[Sequence[int]],
                     base_index: int | None, overrides: Mapping[int, TokenRow] | None = None,
                     n_rows: int | None = None) -> list[torch.Tensor]:
    """Each model's vocabulary tensor re-indexed to the output vocabulary (pure).

    ``rows[m]`` is model m's tensor (tokens on dim 0), ``permutations[m][i]`` the row of output token i in
    model m (-1: absent), ``base_index`` the position of the base among the inputs (None: not an input).
    Missing rows follow the module's policy (one holder's row, else the base's, else the holders' mean,
    else zeros); ``overrides`` (output id -> ``TokenRow``) replace that policy for their tokens. Rows past
    the vocabulary up to ``n_rows`` (``pad_to_multiple_of``) are each model's mean row."""
    overrides = overrides or {}
    n_out = len(permutations[0])
    dtype = rows[0].dtype
    for r in rows[1:]:
        dtype = torch.promote_types(dtype, r.dtype)
    perm = torch.tensor([list(p) for p in permutations], dtype=torch.long)  # (models, n_out)
    present = perm >= 0
    shape = (n_out, *rows[0].shape[1:])
    defaults = torch.zeros(shape, dtype=dtype)
    count = present.sum(dim=0)
    for i, rule in overrides.items():
        if rule.model is not None:
            row = perm[rule.model, i].item() if rule.row is None else rule.row
            if row < 0 or row >= rows[rule.model].shape[0]:
                raise ValueError(f"tokenizer.tokens: output token {i} has no row {row} in its source input")
            defaults[i] = rows[rule.model][row].to(dtype)
    for i in torch.nonzero(count < len(rows)).flatten().tolist():
        holders = [m for m in range(len(rows)) if present[m, i]]
        if i in overrides:
            continue
        if len(holders) == 1:
            defaults[i] = rows[holders[0]][perm[holders[0], i]].to(dtype)
        elif holders and base_index is not None and present[base_index, i]:
            defaults[i] = rows[base_index][perm[base_index, i]].to(dtype)
        elif holders:
            acc = torch.zeros(shape[1:], dtype=dtype)
            for m in holders:
                acc = acc + rows[m][perm[m, i]].to(dtype)
            defaults[i] = acc / len(holders)
    forced = torch.zeros(n_out, dtype=torch.bool)
    forced[[i for i, rule in overrides.items() if rule.force]] = True
    out = []
    for m, r in enumerate(rows):
        aligned = defaults.clone()
        idx = torch.nonzero(present[m] & ~forced).flatten()
        aligned[idx] = r[perm[m, idx]].to(dtype)
        if n_rows is not None and n_rows > n_out:
            aligned = torch.cat([aligned, aligned.mean(dim=0, keepdim=True).expand(n_rows - n_out, *shape[1:])])
        out.append(aligned)
    return out
