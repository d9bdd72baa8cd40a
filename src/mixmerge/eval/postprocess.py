"""Turn raw model output into the code (or summary) that gets scored.

Base-completion outputs continue the prompt: cut them where the function ends, i.e. at the first stop
sequence or the first new top-level statement (the bigcode harness's stop list, plus the rule it
approximates). Chat outputs are free text: take the fenced code block that defines the entry point
(else the first block, else the whole answer) and keep only imports and definitions, dropping the
example calls and prints a chatty model adds (the idea of evalplus's ``sanitize``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

# The bigcode evaluation harness's HumanEval stop sequences, plus assert/markdown/file separators.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\nassert", "\n```", "<file_sep>",
                  "<|endoftext|>", "<|im_end|>")
# MBPP prompts end in a docstring and the model writes the whole function: stop after it.
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n#", "\n```", "<file_sep>",
             "<|endoftext|>", "<|im_end|>")
SUMMARY_STOP = ("\n",)

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_TOP_LEVEL = re.compile(r"\n(?=[^\s#)\]}])")  # a newline followed by an unindented statement


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop sequence."""
    cut = min((i for s in stop if (i := text.find(s)) != -1), default=len(text))
    return text[:cut]


def truncate_body(completion: str, stop: Sequence[str] = HUMANEVAL_STOP) -> str:
    """A base-model continuation of a function header, cut where the function body ends."""
    text = truncate_at_stop(completion, stop)
    match = _TOP_LEVEL.search(text)
    return (text[:match.start()] if match else text).rstrip()


def truncate_function(completion: str, stop: Sequence[str] = MBPP_STOP) -> str:
    """A base-model output that writes whole definitions (MBPP): keep the leading def/import block."""
    text = truncate_at_stop(completion, stop)
    lines, kept, seen_def = text.split("\n"), [], False
    for line in lines:
        top = line[:1] not in ("", " ", "\t")
        if top and seen_def and not line.startswith(("def ", "async def ", "import ", "from ", "@")):
            break
        seen_def = seen_def or line.startswith(("def ", "async def "))
        kept.append(line)
    return "\n".join(kept).rstrip()


def extract_code_block(answer: str, entry_point: str | None = None) -> str:
    """The code in a chat answer: the fenced block defining ``entry_point``, else the first, else all."""
    blocks = [body for _lang, body in _FENCE.findall(answer)]
    if entry_point:
        for body in blocks:
            if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", body):
                return body
    return blocks[0] if blocks else answer


def _parse_prefix(code: str) -> ast.Module | None:
    """Parse ``code``, dropping trailing lines until it parses (chat answers get cut mid-line)."""
    lines = code.split("\n")
    for end in range(len(lines), 0, -1):
        try:
            return ast.parse("\n".join(lines[:end]))
        except SyntaxError:
            continue
    return None


def sanitize_chat_answer(answer: str, entry_point: str | None = None) -> str:
    """Code from a chat answer with only imports, definitions and constants: no demo calls or prints."""
    code = extract_code_block(answer, entry_point)
    tree = _parse_prefix(code)
    if tree is None:
        return code.strip()
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
            ast.AnnAssign)
    lines = code.split("\n")
    parts = []
    for node in tree.body:
        if not isinstance(node, keep):
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and entry_point and entry_point in ast.unparse(node):
            continue  # ``result = f(...)`` demo lines
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        parts.append("\n".join(lines[start:node.end_lineno]))
    return "\n".join(parts).strip()


def first_sentence(text: str) -> str:
    """A generated summary cut at the end of its first line or sentence."""
    line = truncate_at_stop(text.strip(), SUMMARY_STOP)
    match = re.search(r"(?<=[.!?])\s", line)
    return (line[:match.start()] if match else line).strip()
