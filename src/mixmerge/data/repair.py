"""The code-repair task's bugs and its metric: one small mutation per function, exact match after normalising.

A bug is injected by one of three mutations, the kinds a tired programmer makes:
- ``operator_swap``: ``+`` ↔ ``-`` and ``*`` ↔ ``//`` (also in augmented assignments ``+=`` ↔ ``-=``);
- ``off_by_one``: an integer literal ±1, or a non-literal ``range`` bound ``n`` → ``n + 1`` / ``n - 1``;
- ``comparison_flip``: ``<`` ↔ ``<=``, ``>`` ↔ ``>=``, ``==`` ↔ ``!=``.

The mutation is spliced into the original text at the node's exact position, so comments and layout
survive and the buggy prompt differs from the target only at the bug. Every mutant is re-parsed and
compared after normalisation; a site that would not give valid, different code is skipped for the next.
"""

from __future__ import annotations

import ast
import random
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["KINDS", "Mutation", "MutationSite", "exact_match", "mutate", "mutation_sites", "normalize_code"]

KINDS = ("operator_swap", "off_by_one", "comparison_flip")

_BINOP_SWAP = {ast.Add: (ast.Sub, "+", "-"), ast.Sub: (ast.Add, "-", "+"),
               ast.Mult: (ast.FloorDiv, "*", "//"), ast.FloorDiv: (ast.Mult, "//", "*")}
_CMP_SWAP = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
             ast.Eq: ("==", "!="), ast.NotEq: ("!=", "==")}
_SIMPLE = (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant)


@dataclass(frozen=True)
class MutationSite:
    """A place a bug can go: replace bytes ``[start, end)`` of the UTF-8 source with ``replacement``."""

    kind: str
    start: int
    end: int
    replacement: str
    line: int
    description: str


@dataclass(frozen=True)
class Mutation:
    """The buggy ``source``, the ``original`` it came from, and what was changed where (1-based line)."""

    source: str
    original: str
    kind: str
    line: int
    description: str


class _Offsets:
    """Absolute byte offsets from ast's (line, UTF-8 byte column) positions."""

    def __init__(self, data: bytes):
        self.data = data
        self.line_starts = [0]
        for i, byte in enumerate(data):
            if byte == 0x0A:
                self.line_starts.append(i + 1)

    def at(self, lineno: int, col: int) -> int:
        return self.line_starts[lineno - 1] + col

    def start(self, node: ast.AST) -> int:
        return self.at(node.lineno, node.col_offset)

    def end(self, node: ast.AST) -> int:
        return self.at(node.end_lineno, node.end_col_offset)


def _find_operator(data: bytes, start: int, end: int, symbol: str) -> int | None:
    """Byte offset of ``symbol`` in the gap between two operands (only parens, blanks, comments besides)."""
    sym = symbol.encode()
    i = start
    while i < end:
        ch = data[i:i + 1]
        if ch == b"#":
            nl = data.find(b"\n", i, end)
            i = end if nl < 0 else nl + 1
        elif ch in (b" ", b"\t", b"\n", b"\r", b"\\", b"(", b")"):
            i += 1
        elif data.startswith(sym, i):
            after = data[i + len(sym):i + len(sym) + 1]
            # '*' must not be the start of '**', '<' not of '<='… (the symbols we look for are whole tokens)
            if after in (b"=", b"*", b"/") and symbol in ("*", "/", "<", ">", "+", "-"):
                return None
            return i
        else:
            return None
    return None


def mutation_sites(source: str, kinds: Sequence[str] = KINDS) -> list[MutationSite]:
    """Every place a mutation of ``kinds`` can go, in source order; [] if ``source`` does not parse."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown mutation kinds {sorted(unknown)}; choose from {KINDS}")
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    data = source.encode()
    off = _Offsets(data)
    sites: list[MutationSite] = []

    def operator_site(kind, left, right, symbol, replacement, line, what):
        pos = _find_operator(data, off.end(left), off.start(right), symbol)
        if pos is not None:
            sites.append(MutationSite(kind, pos, pos + len(symbol.encode()), replacement, line,
                                      f"{what}: {symbol} → {replacement}"))

    # Positions inside f-strings are unreliable before Python 3.12: never mutate there.
    in_fstring = {id(n) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr) for n in ast.walk(f)}
    for node in ast.walk(tree):
        if id(node) in in_fstring:
            continue
        if "operator_swap" in kinds and isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAP:
            _, symbol, repl = _BINOP_SWAP[type(node.op)]
            operator_site("operator_swap", node.left, node.right, symbol, repl, node.lineno, "operator swap")
        elif "operator_swap" in kinds and isinstance(node, ast.AugAssign) and type(node.op) in _BINOP_SWAP:
            _, symbol, repl = _BINOP_SWAP[type(node.op)]
            operator_site("operator_swap", node.target, node.value, symbol + "=", repl + "=", node.lineno,
                          "augmented assignment swap")
        elif "comparison_flip" in kinds and isinstance(node, ast.Compare):
            lefts = [node.left, *node.comparators[:-1]]
            for op, left, right in zip(node.ops, lefts, node.comparators, strict=True):
                if type(op) in _CMP_SWAP:
                    symbol, repl = _CMP_SWAP[type(op)]
                    operator_site("comparison_flip", left, right, symbol, repl, node.lineno, "comparison flip")
        elif ("off_by_one" in kinds and isinstance(node, ast.Constant) and type(node.value) is int
              and node.end_lineno is not None):
            delta = 1 if (node.lineno * 31 + node.col_offset) % 2 == 0 else -1  # fixed per site
            if node.value == 0:
                delta = 1  # 0 → -1 would read as a different literal form; 0 → 1 is the classic slip
            sites.append(MutationSite("off_by_one", off.start(node), off.end(node), str(node.value + delta),
                                      node.lineno, f"off by one: {node.value} → {node.value + delta}"))
        elif ("off_by_one" in kinds and isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "range" and node.args and not node.keywords):
            bound = node.args[1] if len(node.args) >= 2 else node.args[0]
            if isinstance(bound, ast.Constant):
                continue  # literal bounds are already integer-constant sites
            text = data[off.start(bound):off.end(bound)].decode()
            wrapped = text if isinstance(bound, _SIMPLE) else f"({text})"
            sign = "+" if bound.lineno % 2 else "-"
            sites.append(MutationSite("off_by_one", off.start(bound), off.end(bound), f"{wrapped} {sign} 1",
                                      bound.lineno, f"range bound off by one: {text} → {wrapped} {sign} 1"))
    sites.sort(key=lambda s: (s.start, s.kind))
    return sites


def _apply(source: str, site: MutationSite) -> str:
    data = source.encode()
    return (data[:site.start] + site.replacement.encode() + data[site.end:]).decode()


def mutate(source: str, seed: int, kinds: Sequence[str] = KINDS) -> Mutation | None:
    """Inject one bug into ``source``, chosen deterministically by ``seed``; None if no site exists.

    The seed first picks a mutation kind among those with sites (so literal-heavy code does not only
    get off-by-ones), then a site of that kind. The result always parses and differs from the
    original after ``normalize_code``; if the chosen site cannot give that, the next one is tried.
    """
    sites = mutation_sites(source, kinds)
    if not sites:
        return None
    original_norm = normalize_code(source)
    rng = random.Random(seed)
    by_kind = {k: [s for s in sites if s.kind == k] for k in KINDS if any(s.kind == k for s in sites)}
    kind_order = list(by_kind)
    rng.shuffle(kind_order)
    for kind in kind_order:
        candidates = by_kind[kind]
        first = rng.randrange(len(candidates))
        for site in candidates[first:] + candidates[:first]:
            mutated = _apply(source, site)
            try:
                ast.parse(mutated)
            except SyntaxError:
                continue
            if normalize_code(mutated) != original_norm:
                return Mutation(mutated, source, site.kind, site.line, site.description)
    return None


_FENCE = re.compile(r"^\s*```[\w+-]*\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


def normalize_code(src: str) -> str:
    """Canonical text of code: ``ast.unparse(ast.parse(...))`` (drops comments, layout, quote style).

    A surrounding Markdown code fence is removed and common indentation dedented first. Code that does
    not parse falls back to whitespace folding: trailing blanks stripped, runs of spaces/tabs folded to
    one, blank lines dropped.
    """
    text = src.replace("\r\n", "\n")
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    text = textwrap.dedent(text).strip("\n")
    try:
        return ast.unparse(ast.parse(text))
    except SyntaxError:
        lines = (re.sub(r"[ \t]+", " ", line).rstrip() for line in text.split("\n"))
        return "\n".join(line for line in lines if line.strip())


def exact_match(prediction: str, reference: str) -> bool:
    """True when the prediction is the reference up to comments, formatting and a code fence."""
    return normalize_code(prediction) == normalize_code(reference)
