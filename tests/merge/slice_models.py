"""Tiny random Llama folders with their own WordLevel tokenizers, for the slice and tokenizer tests."""

from __future__ import annotations

from pathlib import Path

import torch

BASE_WORDS = ["<unk>", "<s>", "</s>", "a", "b", "c", "d", "e", "f", "g", "h", "i"]


def make_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def make_llama(out: Path, seed: int, *, layers: int = 4, words: list[str] | None = None,
               added: list[str] = (), chat_template: str | None = None) -> Path:
    """A random Llama (hidden 32) saved in float32 with its tokenizer (``words`` + ``added`` tokens)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(list(words or BASE_WORDS))
    if added:
        tok.add_tokens(list(added))
    if chat_template is not None:
        tok.chat_template = chat_template
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), tie_word_embeddings=False,
                      max_position_embeddings=64)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out
