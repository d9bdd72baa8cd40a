"""The code-repair task as data (``source: repair``): a buggy function in, the original function out.

Embedded (``from: stdlib``, offline): stdlib functions *without a docstring*, each with one bug injected by
``mixmerge.data.repair.mutate`` (operator swap, off-by-one, comparison flip). The stdlib builder of
codegen/codesum only ever extracts functions *with* a docstring, so the repair pool is disjoint from both
of their pools by construction, whatever their ``codegen_share``; as a second guard every function whose
normalised body equals that of any docstring-bearing stdlib function is dropped too. Modules go to
train/valid/test by the same name hash as the stdlib corpus (``stdlib.split_of``).

Public data (``from: local`` or ``from: hub``): any table of (buggy, fixed) pairs, columns named by
``fields: {buggy, fixed, id}``, optionally filtered by ``where: {column: value}`` (e.g. a language column).
"""

from __future__ import annotations

import ast
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mixmerge.data.example import Example
from mixmerge.data.repair import KINDS, exact_match, mutate
from mixmerge.data.stdlib import (
    SPLITS,
    extract_functions,
    iter_modules,
    python_tag,
    read_jsonl,
    split_of,
    stdlib_root,
    write_jsonl,
)
from mixmerge.data.text import stable_hash

log = logging.getLogger(__name__)

BUILDER_VERSION = 1
TASK = "repair"
# The prompt is the buggy function between two comments, so it still parses as Python and a completion
# model knows where the fixed version starts.
PROMPT_HEAD = "# Fix the bug in this function.\n"
PROMPT_TAIL = "# Fixed version:\n"

STDLIB_DEFAULTS: dict[str, Any] = {
    "source": "repair",
    "from": "stdlib",
    "root": None,  # null = the running interpreter's stdlib; a folder of .py files for tests
    "skip_dirs": [
        "test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo",
        "ensurepip", "pydoc_data", "__pycache__", "encodings", "__phello__",
    ],
    "min_body_lines": 3,  # non-blank lines after the def line(s)
    "max_body_lines": 20,
    "max_function_chars": 900,  # the target; the prompt is about the same plus two comment lines
    "valid_fraction": 0.1,  # of modules, same hash as the stdlib corpus
    "test_fraction": 0.1,
    "kinds": list(KINDS),  # mutation kinds to draw from
    "mutation_seed": 0,  # changes which bug each function gets, not which functions are used
    "decontaminate": {"humaneval": True, "mbpp_path": None, "ngram": 13},
}
TABLE_KEYS = frozenset({"source", "from", "path", "paths", "dataset_id", "config", "revision", "split", "splits",
                        "fields", "where", "valid_fraction", "test_fraction", "data_files"})


def repair_prompt(buggy: str) -> str:
    return PROMPT_HEAD + buggy.rstrip("\n") + "\n" + PROMPT_TAIL


def buggy_of(example: Example) -> str:
    """The buggy function inside a repair prompt (the prompt itself when it is not in our format)."""
    text = example.prompt
    if text.startswith(PROMPT_HEAD) and text.endswith(PROMPT_TAIL):
        return text[len(PROMPT_HEAD):-len(PROMPT_TAIL)]
    return text


# ---- embedded: stdlib functions without docstrings -------------------------------------------------------


def _dedent(lines: list[str], col: int) -> list[str]:
    return [line[col:] if line[:col].isspace() or not line[:col] else line for line in lines]


def extract_undocumented(source: str, module: str) -> Iterator[tuple[str, str, str, int]]:
    """``(qualname, text, body_hash, body_lines)`` of top-level functions and methods without a docstring."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    lines = source.splitlines()
    candidates: list[tuple[str, ast.AST]] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            candidates.append((node.name, node))
        elif isinstance(node, ast.ClassDef):
            candidates += [(f"{node.name}.{c.name}", c) for c in node.body
                           if isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef)]
    for qualname, node in candidates:
        if ast.get_docstring(node) is not None or node.body[0].lineno == node.lineno:
            continue
        text = "\n".join(_dedent(lines[node.lineno - 1:node.end_lineno], node.col_offset)).rstrip() + "\n"
        body_lines = sum(1 for line in lines[node.body[0].lineno - 1:node.end_lineno] if line.strip())
        body_hash = stable_hash(ast.dump(ast.Module(body=node.body, type_ignores=[])))
        yield qualname, text, body_hash, body_lines


def stdlib_config(source_cfg: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(source_cfg) - set(STDLIB_DEFAULTS)
    if unknown:
        raise ValueError(f"task.tasks.<name> (source=repair, from=stdlib) has unknown keys {sorted(unknown)}; "
                         f"allowed: {sorted(STDLIB_DEFAULTS)}")
    cfg = {**STDLIB_DEFAULTS, **source_cfg}
    cfg["decontaminate"] = {**STDLIB_DEFAULTS["decontaminate"], **dict(cfg.get("decontaminate") or {})}
    cfg["skip_dirs"] = sorted(cfg["skip_dirs"])
    cfg["kinds"] = list(cfg["kinds"])
    bad = set(cfg["kinds"]) - set(KINDS)
    if bad:
        raise ValueError(f"task.tasks.<name>.kinds has unknown mutation kinds {sorted(bad)}; choose from {KINDS}")
    return cfg


def build_repair_corpus(cfg: Mapping[str, Any], index=None) -> tuple[dict[str, list[Example]], dict]:
    """The repair splits from the stdlib (pure of caching): ``({split: [Example]}, stats)``."""
    root = Path(cfg["root"]) if cfg["root"] else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"task.tasks.<name>.root={str(root)!r} is not a folder of Python files")
    modules = []
    documented: set[str] = set()  # every body the codegen/codesum builder could ever use
    for module, path in iter_modules(root, cfg["skip_dirs"]):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        modules.append((module, source))
        documented.update(fn.body_hash for fn in extract_functions(source, module))
    stats: Counter = Counter()
    seen: set[str] = set()
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for module, source in modules:
        split = split_of(module, cfg["valid_fraction"], cfg["test_fraction"])
        for qualname, text, body_hash, body_lines in extract_undocumented(source, module):
            stats["functions_without_docstring"] += 1
            reason = None
            if body_hash in seen or body_hash in documented:
                reason = "duplicate"
            elif not cfg["min_body_lines"] <= body_lines <= cfg["max_body_lines"]:
                reason = "body_length"
            elif len(text) > cfg["max_function_chars"]:
                reason = "length"
            elif index is not None and index.is_contaminated(qualname.rsplit(".", 1)[-1], text):
                reason = "contaminated"
            seen.add(body_hash)
            if reason is None:
                ex_id = f"repair:{module}:{qualname}:{body_hash[:10]}"
                seed = int(stable_hash(f"{cfg['mutation_seed']}:{ex_id}", 8), 16)
                mutation = mutate(text, seed, cfg["kinds"])
                if mutation is None:
                    reason = "no_mutation_site"
                else:
                    stats[f"kind_{mutation.kind}"] += 1
                    out[split].append(Example(prompt=repair_prompt(mutation.source), target=text, task=TASK,
                                              id=ex_id))
            stats["kept" if reason is None else f"dropped_{reason}"] += 1
    return out, dict(sorted(stats.items()))


def _ensure_stdlib_repair(source_cfg: Mapping[str, Any], store) -> tuple[Path, dict]:
    cfg = stdlib_config(source_cfg)
    python = python_tag()
    key_cfg = {"builder": "repair-stdlib", "builder_version": BUILDER_VERSION, "python": python, **cfg}

    def build(work: Path) -> dict:
        from mixmerge.data.decontaminate import index_from_config

        started = time.perf_counter()
        index = index_from_config(cfg["decontaminate"])
        splits, stats = build_repair_corpus(cfg, index)
        for split, examples in splits.items():
            write_jsonl(work / f"{split}.jsonl", examples)
        counts = {s: len(v) for s, v in splits.items()}
        build_s = round(time.perf_counter() - started, 2)
        log.info("repair corpus (%s) built in %.1f s: %s; %s", python, build_s, counts, stats)
        return {"python": python, "counts": counts, "stats": stats, "build_s": build_s}

    art = store.get_or_build("dataset", key_cfg, build, label=f"repair corpus {python}")
    return art.path, art.manifest


# ---- public tables of (buggy, fixed) pairs ---------------------------------------------------------------


def table_examples(rows: Sequence[Mapping[str, Any]] | Iterator[Mapping[str, Any]], cfg: Mapping[str, Any],
                   where: str, origin: str) -> tuple[list[Example], Counter]:
    """Repair examples from rows with ``fields: {buggy, fixed, id (optional)}``, filtered by ``where``."""
    fields = dict(cfg.get("fields") or {})
    missing = {"buggy", "fixed"} - set(fields)
    if missing:
        raise ValueError(f"{where}.fields needs {sorted(missing)}, e.g. fields: {{buggy: buggy_code, fixed: fixed_code}}")
    filters = dict(cfg.get("where") or {})
    stats: Counter = Counter()
    out, seen = [], set()
    for row in rows:
        for role in ("buggy", "fixed"):
            if fields[role] not in row:
                raise KeyError(f"{where}.fields.{role}={fields[role]!r} is not a column; columns: {sorted(row)}")
        if any(row.get(col) != value for col, value in filters.items()):
            stats["dropped_filter"] += 1
            continue
        buggy, fixed = row[fields["buggy"]], row[fields["fixed"]]
        if not isinstance(buggy, str) or not isinstance(fixed, str) or not fixed.strip() or exact_match(buggy, fixed):
            stats["dropped_invalid"] += 1
            continue
        raw_id = str(row[fields["id"]]) if fields.get("id") else stable_hash(buggy + "\x00" + fixed)
        ex_id = f"repair:{origin}:{raw_id}"
        if ex_id in seen:
            stats["dropped_duplicate"] += 1
            continue
        seen.add(ex_id)
        out.append(Example(prompt=repair_prompt(buggy), target=fixed.rstrip("\n") + "\n", task=TASK, id=ex_id))
    stats["kept"] = len(out)
    return out, stats


def _load_table(task: str, cfg: Mapping[str, Any]) -> tuple[dict[str, list[Example]], dict]:
    from mixmerge.data.hub import carve
    from mixmerge.data.rows import read_hub_split, read_table

    where = f"task.tasks.{task}"
    unknown = set(cfg) - TABLE_KEYS
    if unknown:
        raise ValueError(f"{where} (source=repair) has unknown keys {sorted(unknown)}; allowed: {sorted(TABLE_KEYS)}")
    kind = cfg["from"]
    if kind == "local":
        paths, path = cfg.get("paths"), cfg.get("path")
        if bool(paths) == bool(path):
            raise ValueError(f"{where}: give exactly one of path (one file, carved) or paths ({{train, valid, test}})")
        files, origin = paths or path, "local"
    else:
        dataset_id = cfg.get("dataset_id")
        if not dataset_id:
            raise ValueError(f"{where}.dataset_id is required for source=repair from=hub, "
                             "e.g. ASSERT-KTH/RunBugRun-Final")
        files, origin = cfg.get("data_files"), dataset_id
    stats: Counter = Counter()
    if isinstance(files, Mapping):  # one file per split
        out = {}
        for s in SPLITS:
            if s not in files:
                raise ValueError(f"{where}: the per-split files are missing {s!r}")
            out[s], st = table_examples(read_table(files[s]), cfg, where, origin)
            stats.update(st)
    elif files:
        examples, stats = table_examples(read_table(files), cfg, where, origin)
        out = carve(examples, cfg.get("valid_fraction", 0.05), cfg.get("test_fraction", 0.05))
    elif cfg.get("splits"):
        names = dict(cfg["splits"])
        out = {}
        for s in SPLITS:
            rows = read_hub_split(cfg["dataset_id"], cfg.get("config"), names[s], revision=cfg.get("revision"))
            out[s], st = table_examples(rows, cfg, where, origin)
            stats.update(st)
    else:
        rows = read_hub_split(cfg["dataset_id"], cfg.get("config"), cfg.get("split", "train"),
                              revision=cfg.get("revision"))
        examples, stats = table_examples(rows, cfg, where, origin)
        out = carve(examples, cfg.get("valid_fraction", 0.05), cfg.get("test_fraction", 0.05))
    return out, {"source": "repair", "from": kind, "origin": origin, "stats": dict(sorted(stats.items()))}


def load_repair_task(task_name: str, source_cfg: Mapping[str, Any], store) -> tuple[dict[str, list[Example]], dict]:
    """The repair task's full splits and provenance (same contract as ``stdlib.load_stdlib_task``).

    Examples carry ``task=task_name`` so the task may be named anything in ``task.tasks``.
    """
    source_cfg = dict(source_cfg)
    kind = source_cfg.get("from", "stdlib")
    if kind == "stdlib":
        path, manifest = _ensure_stdlib_repair(source_cfg, store)
        splits = {s: read_jsonl(path / f"{s}.jsonl") for s in SPLITS}
        info = {"source": "repair", "from": "stdlib", "python": manifest["python"], "corpus_key": manifest["key"],
                "corpus_counts": manifest["counts"], "corpus_stats": manifest["stats"]}
    elif kind in ("local", "hub"):
        splits, info = _load_table(task_name, source_cfg)
    else:
        raise ValueError(f"task.tasks.{task_name}.from={kind!r} is not one of ['stdlib', 'local', 'hub']")
    if task_name != TASK:
        splits = {s: [Example(e.prompt, e.target, task_name, e.id) for e in exs] for s, exs in splits.items()}
    return splits, info
