"""The one example format every task is converted to, and how an example becomes model text.

Training, held-out loss and generation all render prompts through ``render_prompt`` so that the text a
model is trained on is exactly the text it is evaluated on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PROMPT_STYLES = ("completion", "chat")

# Chat-style instructions per task; completion style uses the prompt as is (HumanEval style).
TASK_INSTRUCTIONS = {
    "codegen": "Complete the following Python function.",
    "codesum": "Summarize the following Python function in one sentence.",
    "repair": "Fix the bug in the following Python function.",
}


@dataclass(frozen=True)
class Example:
    """One supervised example: the model sees ``prompt`` and learns to produce ``target``."""

    prompt: str
    target: str
    task: str
    id: str

    def to_dict(self) -> dict:
        return asdict(self)


def render_prompt(example: Example, tokenizer=None, style: str = "completion") -> str:
    """The exact prompt text for ``style``; the target is appended right after it."""
    if style == "completion":
        if example.task == "codesum":
            return f"{example.prompt}\n# Summary:"
        return example.prompt
    if style == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("model.prompt_style=chat needs a tokenizer with a chat template; use completion")
        instruction = TASK_INSTRUCTIONS.get(example.task, "")
        content = f"{instruction}\n\n{example.prompt}" if instruction else example.prompt
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise ValueError(f"prompt style {style!r} is not one of {PROMPT_STYLES}")


def render_target(example: Example, tokenizer=None, style: str = "completion") -> str:
    """The target text, ended the way the model should learn to stop."""
    if style == "chat" and tokenizer is not None and tokenizer.eos_token:
        return example.target + tokenizer.eos_token
    if example.task == "codesum":
        return " " + example.target.strip() + "\n"
    return example.target
