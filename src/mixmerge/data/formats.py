"""Row -> Example converters, one per dataset schema. Pure: a dict in, an Example (or None) out.

* ``kodcode`` (KodCode/KodCode-V1-SFT-R1): ``question`` -> ``solution``, id ``question_id``.
* ``codexglue`` (code_x_glue_ct_code_to_text, python): ``code`` with its docstring removed ->
  ``" ".join(docstring_tokens)``, the reference form CodeXGLUE's smoothed BLEU is computed on.
* ``fields``: any table, with ``fields: {prompt: <col>, target: <col>, id: <col or null>}``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

from mixmerge.data.example import Example
from mixmerge.data.text import stable_hash


def strip_docstring(code: str) -> str | None:
    """``code`` (one function) without its docstring, or None if it does not parse."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)), None)
    if func is None or ast.get_docstring(func) is None:
        return code.rstrip() + "\n" if func is not None else None
    doc = func.body[0]
    lines = code.splitlines()
    kept = lines[: doc.lineno - 1] + lines[doc.end_lineno :]
    if len(func.body) == 1:  # only a docstring: keep a body so the prompt stays valid Python
        kept.insert(doc.lineno - 1, " " * doc.col_offset + "pass")
    return "\n".join(kept).rstrip() + "\n"


def kodcode_example(row: Mapping[str, Any], task: str) -> Example | None:
    question, solution = (row.get("question") or "").strip(), row.get("solution") or ""
    if not question or not solution.strip():
        return None
    return Example(prompt=question + "\n\n", target=solution.rstrip() + "\n", task=task,
                   id=f"kodcode:{row.get('question_id') or stable_hash(question)}")


def codexglue_example(row: Mapping[str, Any], task: str) -> Example | None:
    tokens = row.get("docstring_tokens") or []
    code = strip_docstring(row.get("code") or "")
    if code is None:
        code = " ".join(row.get("code_tokens") or [])
    if not tokens or not code.strip():
        return None
    return Example(prompt=code, target=" ".join(tokens), task=task,
                   id=f"codexglue:{row.get('id', stable_hash(code))}")


def fields_converter(fields: Mapping[str, Any] | None, where: str) -> Callable[[Mapping, str], Example | None]:
    """A converter for a table whose columns are named by ``fields`` (prompt, target, optional id)."""
    fields = dict(fields or {})
    missing = {"prompt", "target"} - set(fields)
    if missing:
        raise ValueError(f"{where}.fields needs {sorted(missing)}, e.g. fields: {{prompt: question, target: answer}}")

    def convert(row: Mapping[str, Any], task: str) -> Example | None:
        for role in ("prompt", "target"):
            if fields[role] not in row:
                raise KeyError(f"{where}.fields.{role}={fields[role]!r} is not a column; columns: {sorted(row)}")
        prompt, target = row[fields["prompt"]], row[fields["target"]]
        if not isinstance(prompt, str) or not isinstance(target, str) or not prompt.strip() or not target.strip():
            return None
        ex_id = str(row[fields["id"]]) if fields.get("id") else stable_hash(prompt + "\x00" + target)
        return Example(prompt=prompt, target=target, task=task, id=f"row:{ex_id}")

    return convert


FORMATS = ("kodcode", "codexglue", "fields")


def converter(fmt: str, source_cfg: Mapping[str, Any], where: str) -> Callable[[Mapping, str], Example | None]:
    if fmt == "kodcode":
        return kodcode_example
    if fmt == "codexglue":
        return codexglue_example
    if fmt == "fields":
        return fields_converter(source_cfg.get("fields"), where)
    raise ValueError(f"{where}.format={fmt!r} is not one of {FORMATS}")
