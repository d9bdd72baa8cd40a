import pytest

from mixmerge.data import IGNORE_INDEX, Example, render_prompt, tokenize_example
from mixmerge.data.tokenize import bucket_by_length, pack_first_fit, padding_fraction

EX = Example('def add(a, b):\n    """Add a and b."""\n', "    return a + b\n", "codegen", "x")


def test_prompt_is_masked_and_target_ends_with_eos(tokenizer):
    out = tokenize_example(EX, tokenizer, "completion", 512)
    prompt_ids = tokenizer(render_prompt(EX, tokenizer, "completion"), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert out["input_ids"][:n] == prompt_ids
    assert out["labels"][:n] == [IGNORE_INDEX] * n
    assert out["labels"][n:] == out["input_ids"][n:]
    assert out["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(out["input_ids"][n:-1]) == EX.target


def test_chat_style_uses_the_template_and_one_eos(tokenizer):
    out = tokenize_example(EX, tokenizer, "chat", 512)
    text = tokenizer.decode(out["input_ids"])
    assert "<|im_start|>user" in text and "Complete the following Python function." in text
    target = [v for v in out["labels"] if v != IGNORE_INDEX]
    assert target.count(tokenizer.eos_token_id) == 1 and target[-1] == tokenizer.eos_token_id


def test_truncation_keeps_prompt_end_and_some_target(tokenizer):
    long = Example("x = 1\n" * 200, "    return 2\n" * 50, "codegen", "long")
    out = tokenize_example(long, tokenizer, "completion", 64)
    assert len(out["input_ids"]) == 64
    n_target = sum(1 for v in out["labels"] if v != IGNORE_INDEX)
    assert n_target == 32 and out["labels"][0] == IGNORE_INDEX
    with pytest.raises(ValueError, match="task.max_length=1"):
        tokenize_example(EX, tokenizer, "completion", 1)


def test_pack_first_fit_uses_every_index_once_within_capacity():
    lengths = [5, 9, 3, 7, 2, 8, 6, 4, 1, 10]
    rows = pack_first_fit(lengths, 10, seed=0)
    assert sorted(i for r in rows for i in r) == list(range(10))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert len(rows) <= 7  # total 55 tokens -> at least 6 rows; first fit stays close
    assert rows == pack_first_fit(lengths, 10, seed=0)
    with pytest.raises(ValueError, match="exceeds"):
        pack_first_fit([11], 10, seed=0)


def test_bucket_by_length_groups_similar_lengths():
    lengths = list(range(1, 101))
    batches = bucket_by_length(lengths, 10, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert padding_fraction([[lengths[i] for i in b] for b in batches]) < 0.1


def test_padding_fraction_numbers():
    assert padding_fraction([[4, 4], [2, 1]]) == pytest.approx(1 - 11 / 12)
    assert padding_fraction([[3, 3, 3]]) == 0.0
