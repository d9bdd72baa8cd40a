"""The one example format every task is converted to, and how an example becomes model text.

Training, held-out loss and generation all render prompts through ``render_prompt`` so that the text a
model is trained on is exactly the text it is evaluated on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mixmerge.tasks import task_spec

PROMPT_STYLES = ("completion", "chat")


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
    """The exact prompt text for ``style``; the target is appended right after it.

    Completion style is the prompt plus the task's ``completion_suffix`` (HumanEval style: nothing); chat
    style puts the task's ``instruction`` before it in one user turn (rows in ``mixmerge.tasks``).
    """
    if style == "completion":
        return example.prompt + task_spec(example.task).completion_suffix
    if style == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("model.prompt_style=chat needs a tokenizer with a chat template; use completion")
        instruction = task_spec(example.task).instruction
        content = f"{instruction}\n\n{example.prompt}" if instruction else example.prompt
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise ValueError(f"prompt style {style!r} is not one of {PROMPT_STYLES}")


def render_target(example: Example, tokenizer=None, style: str = "completion") -> str:
    """The target text, ended the way the model should learn to stop."""
    if style == "chat" and tokenizer is not None and tokenizer.eos_token:
        return example.target + tokenizer.eos_token
    if task_spec(example.task).target_is_sentence:
        return " " + example.target.strip() + "\n"
    return example.target
