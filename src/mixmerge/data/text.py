"""Pure text helpers shared by the task builders: docstring summaries, code normalisation, n-grams.

No files and no configs here, so every rule can be tested on strings in milliseconds.
"""

from __future__ import annotations

import hashlib
import re

# Code and prose are compared on these tokens: identifiers/numbers, or single punctuation characters.
_TOKEN = re.compile(r"\w+|[^\w\s]")
# A sentence ends at '.', '!' or '?' followed by whitespace (so "e.g." inside a word and "3.5" survive).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
# Docstring summaries with these are markup or links rather than prose (CodeXGLUE drops them too).
_UNWANTED = re.compile(r"https?://|<img|\bTODO\b|>>>|\.\. ", re.IGNORECASE)


def code_tokens(text: str) -> list[str]:
    """Whitespace-insensitive tokens of code or prose: words and single punctuation marks."""
    return _TOKEN.findall(text)


def stable_hash(text: str, length: int = 16) -> str:
    """A short hex digest that is the same on every machine and Python run (unlike ``hash``)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def unit_interval(text: str) -> float:
    """Map ``text`` to a fixed number in [0, 1): a seedless, order-free way to assign buckets."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / float(16**12)


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """All contiguous ``n``-token windows (empty when the text is shorter than ``n``)."""
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def first_sentence(docstring: str) -> str:
    """The first sentence of the first paragraph of a docstring, on one line.

    Like CodeSearchNet/CodeXGLUE, which keep the docstring's first paragraph as the summary, but cut
    to one sentence because a one-line summary is what the codesum target should be.
    """
    paragraph = re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0]
    flat = " ".join(paragraph.split())
    sentence = _SENTENCE_END.split(flat, maxsplit=1)[0]
    return sentence.strip()


def normalise_summary(docstring: str, *, min_words: int, max_words: int) -> str | None:
    """The codesum target for ``docstring``, or None when it would make a poor target.

    Rejected: summaries with links, doctest or reST markup, non-ASCII text (CodeXGLUE keeps English
    only), and summaries shorter than ``min_words`` or longer than ``max_words`` tokens.
    """
    summary = first_sentence(docstring)
    if not summary or _UNWANTED.search(summary) or not summary.isascii():
        return None
    if summary.endswith(":"):  # "Returns the following:" introduces a list; the sentence is incomplete
        return None
    words = code_tokens(summary)
    if not (min_words <= len(words) <= max_words):
        return None
    return summary
