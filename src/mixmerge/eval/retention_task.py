"""Build the offline general-language retention task: next-sentence choice over CPython's reference prose.

Source text: ``pydoc_data.topics``, the Language Reference prose that ships with every CPython (what
``help("for")`` prints). The training pools never read it: the stdlib corpus walks function docstrings
and skips the ``pydoc_data`` folder (``data/stdlib.py``), and :func:`decontaminate` also drops every item
sharing a word 8-gram with any stdlib function docstring, so the task measures text the specialists were
not trained on.

An item is one or two consecutive sentences of a prose paragraph as the context and four candidate next
sentences: the true one and three from other topics, of similar length. A loglikelihood multiple choice,
so it costs four scoring passes per item and no generation. Everything is deterministic (sorted walks,
seedless hashes), so the same interpreter always builds the same file; the shipped file
(``lm_eval_local/pydoc_next.jsonl``) was built by ``python -m mixmerge.eval.retention_task`` on CPython
3.11 and is what every machine evaluates, whatever its Python.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from mixmerge.data.text import code_tokens, ngrams, stable_hash

N_CHOICES = 4
NGRAM = 8  # word n-gram for the docstring overlap check (13 is the code rule; prose overlaps sooner)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"])")
_MARKUP = re.compile(r"::|>>>|\*\*\*|===|---|https?://|\[\d+\]")
_PLAIN_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})
TASK_DIR = Path(__file__).with_name("lm_eval_local")
DATA_FILE = TASK_DIR / "pydoc_next.jsonl"


def prose_paragraphs(text: str) -> Iterator[str]:
    """Paragraphs of running text on one line each: blocks whose lines share one indentation (the
    description under a method's signature is indented; code blocks mostly are not uniform), headings,
    grammar and doctest left out."""
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or len({len(line) - len(line.lstrip()) for line in lines}) != 1:
            continue
        flat = " ".join(line.strip() for line in lines).translate(_PLAIN_QUOTES)
        if len(lines) == 1 and not flat.endswith("."):
            continue  # a heading
        yield flat


def sentences(paragraph: str, *, min_chars: int = 40, max_chars: int = 220) -> list[str | None]:
    """The paragraph's sentences; ``None`` marks one unusable as a question part (markup, odd length)."""
    out: list[str | None] = []
    for s in _SENTENCE.split(paragraph):
        s = s.strip()
        usable = min_chars <= len(s) <= max_chars and s.endswith(".") and not _MARKUP.search(s) and s.isascii()
        out.append(s if usable else None)
    return out


def candidate_items(topics: Mapping[str, str]) -> list[dict]:
    """Every (context, answer) pair: a usable sentence (with the one before it when that is usable too)
    followed by a usable next sentence of the same paragraph."""
    items = []
    for topic in sorted(topics):
        for p_index, paragraph in enumerate(prose_paragraphs(topics[topic])):
            sents = sentences(paragraph)
            for i in range(1, len(sents) - 1):
                before, last, answer = sents[i - 1 : i + 2]
                if last and answer:
                    context = f"{before} {last}" if before else last
                    items.append({"topic": topic, "where": f"{topic}/{p_index}/{i}", "context": context,
                                  "answer": answer})
    return items


def _distractors(item: dict, pool: list[dict], k: int) -> list[str]:
    """``k`` answers of other topics closest in length to ``item``'s, ties broken by a seedless hash."""
    others = {c["answer"] for c in pool if c["topic"] != item["topic"] and c["answer"] != item["answer"]}
    ranked = sorted(others, key=lambda s: (abs(len(s) - len(item["answer"])) // 20,
                                           stable_hash(item["where"] + s)))
    return ranked[:k]


def docstring_grams(docstrings: Iterable[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    """Lower-cased word ``n``-grams of the training side's docstrings."""
    grams: set[tuple[str, ...]] = set()
    for doc in docstrings:
        grams |= ngrams([t.lower() for t in code_tokens(doc)], n)
    return grams


def overlaps(text: str, grams: set[tuple[str, ...]], n: int = NGRAM) -> bool:
    return not grams.isdisjoint(ngrams([t.lower() for t in code_tokens(text)], n))


def build_items(topics: Mapping[str, str], *, n_items: int, per_topic: int,
                banned_grams: set[tuple[str, ...]]) -> list[dict]:
    """``n_items`` multiple-choice items, at most ``per_topic`` per topic, none overlapping ``banned_grams``.

    Selection and output order are a seedless hash of the item's place: the set does not depend on dict
    order, and any prefix (what lm-eval's ``limit`` takes) mixes topics.
    """
    pool = [c for c in candidate_items(topics) if not overlaps(f"{c['context']} {c['answer']}", banned_grams)]
    chosen, per = [], dict.fromkeys(topics, 0)
    for cand in sorted(pool, key=lambda c: stable_hash(c["where"])):
        if per[cand["topic"]] >= per_topic:
            continue
        wrong = _distractors(cand, pool, N_CHOICES - 1)
        if len(wrong) < N_CHOICES - 1:
            continue
        label = int(stable_hash("label:" + cand["where"]), 16) % N_CHOICES
        choices = [*wrong[:label], cand["answer"], *wrong[label:]]
        chosen.append({"id": cand["where"], "context": cand["context"], "choices": choices, "label": label})
        per[cand["topic"]] += 1
        if len(chosen) == n_items:
            break
    if len(chosen) < n_items:
        raise ValueError(f"only {len(chosen)} items could be built (asked for {n_items}); lower n_items")
    return chosen  # in hash order, so lm-eval's `limit` (the first N items) is a spread sample of topics


def stdlib_docstrings() -> Iterator[str]:
    """Every function docstring the stdlib training corpus can draw from (its default walk)."""
    from mixmerge.data.stdlib import DEFAULTS, extract_functions, iter_modules, stdlib_root

    for module, path in iter_modules(stdlib_root(), DEFAULTS["skip_dirs"]):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for fn in extract_functions(source, module):
            yield fn.docstring


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_FILE)
    parser.add_argument("--n-items", type=int, default=150)
    parser.add_argument("--per-topic", type=int, default=5)
    args = parser.parse_args(argv)
    import pydoc_data.topics

    items = build_items(pydoc_data.topics.topics, n_items=args.n_items, per_topic=args.per_topic,
                        banned_grams=docstring_grams(stdlib_docstrings()))
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text("".join(json.dumps(item, ensure_ascii=True) + "\n" for item in items))
    tmp.replace(args.out)
    print(f"wrote {len(items)} items to {args.out}")


if __name__ == "__main__":
    main()
