"""Pure metrics: unbiased pass@k and CodeXGLUE's smoothed sentence BLEU-4.

BLEU follows CodeXGLUE's code-to-text ``evaluator/bleu.py`` step for step (itself from the NIST
mteval-v11a tokeniser and Lin & Och's add-one smoothing): lower-case, split words from punctuation,
NIST-normalise, score each sentence with add-one smoothing on the 2- to 4-gram precisions and the
brevity penalty ``min(0, 1 - (ref+1)/(hyp+1))``, average over sentences, scale to 0-100.
https://github.com/microsoft/CodeXGLUE/tree/main/Code-Text/code-to-text/evaluator
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Sequence
from xml.sax.saxutils import unescape

MAX_ORDER = 4
_TINY = sys.float_info.min  # the evaluator adds this inside every log so that log(0) stays finite

_NIST_JOIN = [(re.compile(p), r) for p, r in ((r"<skipped>", ""), (r"-\n", ""), (r"\n", " "))]
_NIST_SPLIT = [
    (re.compile(p), r)
    for p, r in (
        (r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 "),  # punctuation (not the apostrophe)
        (r"([^0-9])([\.,])", r"\1 \2 "),  # period/comma unless preceded by a digit
        (r"([\.,])([^0-9])", r" \1 \2"),  # period/comma unless followed by a digit
        (r"([0-9])(-)", r"\1 \2 "),  # a dash after a digit
    )
]
_WORDS_AND_PUNCT = re.compile(r"[\w]+|[^\s\w]")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed: ``1 - C(n-c, k) / C(n, k)``.

    Computed as a stable product (Chen et al. 2021, "Evaluating Large Language Models Trained on
    Code", fig. 3) so large ``n`` never overflows.
    """
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least k samples per problem, got n={n}; raise eval.n")
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def split_punctuation(text: str) -> str:
    """CodeXGLUE's first pass: lower-case, then words and single punctuation marks joined by spaces."""
    return " ".join(_WORDS_AND_PUNCT.findall(text.strip().lower()))


def nist_tokenize(text: str) -> list[str]:
    """The NIST mteval-v11a normalisation the evaluator applies on top (lower-cased)."""
    for pattern, repl in _NIST_JOIN:
        text = pattern.sub(repl, text)
    text = unescape(text, {"&quot;": '"'})
    text = f" {text} ".lower()
    for pattern, repl in _NIST_SPLIT:
        text = pattern.sub(repl, text)
    return text.split()


def codexglue_tokenize(text: str) -> list[str]:
    """The tokens CodeXGLUE's code-to-text evaluator scores."""
    return nist_tokenize(split_punctuation(text))


def _ngrams(tokens: Sequence[str], max_order: int = MAX_ORDER) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


def sentence_bleu(references: Sequence[str], prediction: str) -> float:
    """Smoothed BLEU-4 of one prediction against its references, on the 0-1 scale."""
    refs = [codexglue_tokenize(r) for r in references]
    hyp = codexglue_tokenize(prediction)
    max_ref_counts: Counter = Counter()
    for ref in refs:
        for gram, count in _ngrams(ref).items():
            max_ref_counts[gram] = max(max_ref_counts[gram], count)
    ref_len = min(len(r) for r in refs)  # the evaluator's "shortest" effective reference length
    correct = [0] * MAX_ORDER
    for gram, count in _ngrams(hyp).items():
        correct[len(gram) - 1] += min(max_ref_counts.get(gram, 0), count)
    log_bleu = 0.0
    for n in range(MAX_ORDER):
        guess = max(len(hyp) - n, 0)
        smooth = 1 if n > 0 else 0
        log_bleu += math.log(correct[n] + smooth + _TINY) - math.log(guess + smooth + _TINY)
    log_bleu /= MAX_ORDER
    brevity = min(0.0, 1.0 - (ref_len + 1) / (len(hyp) + 1))
    return math.exp(log_bleu + brevity)


def smoothed_bleu4(references: Sequence[str | Sequence[str]], predictions: Sequence[str]) -> float:
    """Mean smoothed sentence BLEU-4 over pairs, 0-100, as CodeXGLUE's evaluator reports it.

    Each reference may be a string or a list of alternative strings for the same prediction.
    """
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if not predictions:
        raise ValueError("smoothed BLEU-4 of zero pairs is undefined")
    total = 0.0
    for ref, pred in zip(references, predictions, strict=True):
        total += sentence_bleu([ref] if isinstance(ref, str) else list(ref), pred)
    return 100.0 * total / len(predictions)
