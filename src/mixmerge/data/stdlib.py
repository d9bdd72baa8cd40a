"""The embedded, offline task source: codegen and codesum built from the running interpreter's stdlib.

Like CodeSearchNet/CodeXGLUE were built from GitHub functions, we parse every stdlib module with
``ast`` and keep top-level functions and methods that have a docstring and a body of sensible length:

* codegen: prompt = signature + docstring (HumanEval style), target = the body;
* codesum: prompt = the function without its docstring, target = the docstring's first sentence.

Determinism: a sorted file walk, a seedless hash for every random-looking choice, so the same
interpreter always builds the same corpus. Leakage control, in this order:
  1. exact duplicates (same normalised body: ``ast.dump`` of the statements, blind to comments and
     formatting) keep only the first occurrence in walk order;
  2. functions overlapping HumanEval/MBPP are dropped (rule in ``decontaminate.py``);
  3. each *module* goes wholly to train, valid or test (hash of the module name), so no module is in two
     splits of either task;
  4. each function goes to exactly one task pool (hash of its normalised body), so the codegen and
     codesum pools are disjoint, also across differently-configured builds.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import platform
import sysconfig
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixmerge.data.decontaminate import BenchmarkIndex, index_from_config
from mixmerge.data.example import Example
from mixmerge.data.text import normalise_summary, stable_hash, unit_interval

log = logging.getLogger(__name__)

# Bump when extraction rules change so cached corpora are rebuilt.
BUILDER_VERSION = 1
TASKS = ("codegen", "codesum")
SPLITS = ("train", "valid", "test")

DEFAULTS: dict[str, Any] = {
    "root": None,  # null = the running interpreter's stdlib; a folder of .py files for tests
    "skip_dirs": [
        "test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo",
        "ensurepip", "pydoc_data", "__pycache__", "encodings", "__phello__",
    ],
    "min_body_lines": 3,  # non-blank body lines after the docstring
    "max_body_lines": 30,
    "max_target_chars": 1200,  # codegen body
    "max_prompt_chars": 2000,  # either task's prompt
    "summary_min_words": 3,  # codesum target tokens (words and punctuation)
    "summary_max_words": 40,
    "valid_fraction": 0.1,  # of modules
    "test_fraction": 0.1,
    "codegen_share": 0.5,  # of distinct functions; the rest is the codesum pool
    "decontaminate": {"humaneval": True, "mbpp_path": None, "ngram": 13},
}
CORPUS_KEYS = frozenset(DEFAULTS)


@dataclass(frozen=True)
class Function:
    """One extracted function, already cut into the pieces both tasks need."""

    module: str
    qualname: str
    body_hash: str
    header: str  # signature + docstring, dedented, ending in a newline
    signature: str  # the def line(s) only
    body: str  # statements after the docstring, ending in a newline
    docstring: str

    @property
    def text(self) -> str:
        return self.header + self.body


def corpus_config(source_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The stdlib builder config with defaults filled in; unknown keys are an error."""
    unknown = set(source_cfg) - CORPUS_KEYS - {"source"}
    if unknown:
        raise ValueError(
            f"task.tasks.<name> (source=stdlib) has unknown keys {sorted(unknown)}; allowed: {sorted(CORPUS_KEYS)}"
        )
    cfg = {**DEFAULTS, **{k: v for k, v in source_cfg.items() if k != "source"}}
    cfg["decontaminate"] = {**DEFAULTS["decontaminate"], **dict(cfg.get("decontaminate") or {})}
    cfg["skip_dirs"] = sorted(cfg["skip_dirs"])
    return cfg


def _dedent(lines: list[str], col: int) -> list[str]:
    """Remove ``col`` leading characters when they are spaces (lines inside multi-line strings stay)."""
    return [line[col:] if line[:col].isspace() or not line[:col] else line for line in lines]


def extract_functions(source: str, module: str) -> Iterator[Function]:
    """Top-level functions and methods of top-level classes with a docstring and a separate body."""
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
            candidates += [
                (f"{node.name}.{child.name}", child)
                for child in node.body
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            ]
    for qualname, node in candidates:
        doc = ast.get_docstring(node, clean=True)
        if not doc or len(node.body) < 2:
            continue
        doc_node, rest = node.body[0], node.body[1:]
        if doc_node.lineno == node.lineno or rest[0].lineno <= doc_node.end_lineno:
            continue  # one-liners like `def f(): "doc"; return 1` cannot be cut into header/body
        col = node.col_offset
        header = _dedent(lines[node.lineno - 1 : doc_node.end_lineno], col)
        signature = _dedent(lines[node.lineno - 1 : doc_node.lineno - 1], col)
        body = _dedent(lines[doc_node.end_lineno : node.end_lineno], col)
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        if not body:
            continue
        normalised = ast.dump(ast.Module(body=rest, type_ignores=[]))
        yield Function(
            module=module,
            qualname=qualname,
            body_hash=stable_hash(normalised),
            header="\n".join(header) + "\n",
            signature="\n".join(signature) + "\n",
            body="\n".join(body) + "\n",
            docstring=doc,
        )


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_modules(root: Path, skip_dirs: list[str]) -> Iterator[tuple[str, Path]]:
    """``(dotted module name, file)`` for every .py file under ``root``, in sorted order."""
    skip = set(skip_dirs)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1] or ["__init__"]
            yield ".".join(parts), path


def split_of(module: str, valid_fraction: float, test_fraction: float) -> str:
    """Which split a whole module belongs to: fixed by its name, never by a seed."""
    u = unit_interval("split:" + module)
    if u < test_fraction:
        return "test"
    return "valid" if u < test_fraction + valid_fraction else "train"


def pool_of(body_hash: str, codegen_share: float) -> str:
    """Which task pool a function belongs to: fixed by its normalised body, never by a seed."""
    return "codegen" if unit_interval("pool:" + body_hash) < codegen_share else "codesum"


def to_example(fn: Function, task: str, cfg: Mapping[str, Any]) -> tuple[Example | None, str]:
    """The example ``fn`` gives for ``task``, or None and the reason it was filtered out."""
    body_lines = sum(1 for line in fn.body.splitlines() if line.strip())
    if not cfg["min_body_lines"] <= body_lines <= cfg["max_body_lines"]:
        return None, "body_length"
    ex_id = f"stdlib:{fn.module}:{fn.qualname}:{fn.body_hash[:10]}"
    if task == "codegen":
        if len(fn.body) > cfg["max_target_chars"]:
            return None, "target_length"
        prompt, target = fn.header, fn.body
    else:
        summary = normalise_summary(fn.docstring, min_words=cfg["summary_min_words"],
                                    max_words=cfg["summary_max_words"])
        if summary is None:
            return None, "summary"
        prompt, target = fn.signature + fn.body, summary
    if len(prompt) > cfg["max_prompt_chars"]:
        return None, "prompt_length"
    return Example(prompt=prompt, target=target, task=task, id=ex_id), "kept"


def build_corpus(cfg: Mapping[str, Any], index: BenchmarkIndex | None) -> tuple[dict, dict]:
    """Both tasks' splits from the stdlib: ``({task: {split: [Example]}}, stats)``. Pure of caching."""
    root = Path(cfg["root"]) if cfg["root"] else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"task.tasks.<name>.root={str(root)!r} is not a folder of Python files")
    stats: Counter = Counter()
    seen: set[str] = set()
    out: dict[str, dict[str, list[Example]]] = {t: {s: [] for s in SPLITS} for t in TASKS}
    for module, path in iter_modules(root, cfg["skip_dirs"]):
        stats["files"] += 1
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            stats["unreadable_files"] += 1
            continue
        split = split_of(module, cfg["valid_fraction"], cfg["test_fraction"])
        for fn in extract_functions(source, module):
            stats["functions_with_docstring"] += 1
            if fn.body_hash in seen:
                stats["dropped_duplicate"] += 1
                continue
            seen.add(fn.body_hash)
            if index is not None and index.is_contaminated(fn.qualname.rsplit(".", 1)[-1], fn.text):
                stats["dropped_contaminated"] += 1
                continue
            task = pool_of(fn.body_hash, cfg["codegen_share"])
            example, reason = to_example(fn, task, cfg)
            if example is None:
                stats[f"dropped_{task}_{reason}"] += 1
                continue
            out[task][split].append(example)
    return out, dict(sorted(stats.items()))


def data_hash(examples_by_split: Mapping[str, list[Example]]) -> str:
    """A content hash of a task's data in its stored order."""
    payload = json.dumps({s: [e.to_dict() for e in exs] for s, exs in examples_by_split.items()}, sort_keys=True)
    return stable_hash(payload, 20)


def python_tag() -> str:
    """The interpreter a corpus was built from (its stdlib is the corpus): e.g. ``CPython-3.11.7``."""
    return f"{platform.python_implementation()}-{platform.python_version()}"


def write_jsonl(path: Path, examples: list[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_dict(), sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[Example]:
    with open(path) as f:
        return [Example(**json.loads(line)) for line in f if line.strip()]


def ensure_corpus(source_cfg: Mapping[str, Any], store) -> tuple[Path, dict]:
    """Build (once per Python version and builder config) and return the corpus folder and manifest."""
    cfg = corpus_config(source_cfg)
    python = python_tag()
    key_cfg = {"builder": "stdlib", "builder_version": BUILDER_VERSION, "python": python, **cfg}

    def build(work: Path) -> dict:
        started = time.perf_counter()
        index = index_from_config(cfg["decontaminate"])
        corpus, stats = build_corpus(cfg, index)
        counts, hashes = {}, {}
        for task, splits in corpus.items():
            for split, examples in splits.items():
                write_jsonl(work / task / f"{split}.jsonl", examples)
            counts[task] = {s: len(v) for s, v in splits.items()}
            hashes[task] = data_hash(splits)
        build_s = time.perf_counter() - started
        log.info("stdlib corpus (%s) built in %.1f s: %s; filters: %s", python, build_s, counts, stats)
        return {"python": python, "data_hash": hashes, "counts": counts, "stats": stats,
                "build_s": round(build_s, 2), "decontaminated_against": list(index.sources if index else [])}

    art = store.get_or_build("dataset", key_cfg, build, label=f"stdlib corpus {python}")
    return art.path, art.manifest


def load_stdlib_task(task: str, source_cfg: Mapping[str, Any], store) -> tuple[dict[str, list[Example]], dict]:
    """One task's full splits from the cached corpus, plus what the manifest says about them."""
    if task not in TASKS:
        raise ValueError(f"source=stdlib builds only {TASKS}; task {task!r} needs source=hub or source=local")
    path, manifest = ensure_corpus(source_cfg, store)
    splits = {s: read_jsonl(path / task / f"{s}.jsonl") for s in SPLITS}
    info = {
        "source": "stdlib",
        "python": manifest["python"],
        "corpus_key": manifest["key"],
        "corpus_data_hash": manifest["data_hash"][task],
        "corpus_counts": manifest["counts"][task],
        "corpus_stats": manifest["stats"],
    }
    return splits, info
