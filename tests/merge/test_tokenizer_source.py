"""mergekit ``tokenizer_source`` (base / union / a model) and ``chat_template``, on tiny Llamas whose
WordLevel vocabularies differ by a few added tokens."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from slice_models import make_llama  # noqa: E402

from mixmerge.merge.chat_templates import CHAT_TEMPLATES  # noqa: E402
from mixmerge.merge.mergekit_yaml import mergekit_to_merge_cfg  # noqa: E402
from mixmerge.merge.slices import merge_layout  # noqa: E402
from mixmerge.merge.tokenizer_merge import align_vocab_rows  # noqa: E402

ZEPHYR = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"


@pytest.fixture(scope="module")
def vocab_models(tmp_path_factory):
    """base: 12 words + <z>; a: + <z>, <x>; b: + <x>, <y> (so <x> sits at id 13 in a, 12 in b)."""
    root = tmp_path_factory.mktemp("vocab")
    return {"base": make_llama(root / "base", 0, layers=2, added=["<z>"], chat_template=ZEPHYR),
            "a": make_llama(root / "a", 1, layers=2, added=["<z>", "<x>"], chat_template=ZEPHYR),
            "b": make_llama(root / "b", 2, layers=2, added=["<x>", "<y>"])}


def _merge(doc, out):
    return merge_layout(mergekit_to_merge_cfg(doc, "test.yml")["layout"], out)


def _ta_doc(m, source, **extra):
    return {"merge_method": "task_arithmetic", "base_model": str(m["base"]), "tokenizer_source": source,
            "models": [{"model": str(m["a"]), "parameters": {"weight": 0.5}},
                       {"model": str(m["b"]), "parameters": {"weight": 0.5}}], **extra}


def _vocab(path):
    return json.loads((Path(path) / "tokenizer.json").read_text())


def _ids(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path)).get_vocab()


def test_union_rows_follow_mergekits_policy(vocab_models, tmp_path):
    m = vocab_models
    report = _merge(_ta_doc(m, "union"), tmp_path / "out")
    out_ids = _ids(tmp_path / "out")
    assert report["vocab_size"] == 15 and len(out_ids) == 15
    assert {"<z>", "<x>", "<y>"} <= set(out_ids)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 15
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    w = {k: load_file(str(m[k] / "model.safetensors")) for k in m}
    ids = {k: _ids(m[k]) for k in m}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert out[name].shape == (15, 32)

        def row(model, tok, name=name):
            return w[model][name][ids[model][tok]]

        # a word every model has: plain task arithmetic
        expect = row("base", "c") + 0.5 * (row("a", "c") - row("base", "c")) + 0.5 * (row("b", "c") - row("base", "c"))
        torch.testing.assert_close(out[name][out_ids["c"]], expect)
        # <z>: base and a have it; b's missing row is the base's -> b adds nothing
        torch.testing.assert_close(out[name][out_ids["<z>"]], row("base", "<z>") + 0.5 * (row("a", "<z>") - row("base", "<z>")))
        # <x>: a and b (not the base): the base's row is their mean
        mean = (row("a", "<x>") + row("b", "<x>")) / 2
        torch.testing.assert_close(out[name][out_ids["<x>"]], mean + 0.5 * (row("a", "<x>") - mean) + 0.5 * (row("b", "<x>") - mean))
        # <y>: only b -> every model gets b's row, the merge returns it
        torch.testing.assert_close(out[name][out_ids["<y>"]], row("b", "<y>"))


def test_base_source_keeps_the_base_vocabulary(vocab_models, tmp_path):
    m = vocab_models
    _merge(_ta_doc(m, "base"), tmp_path / "out")
    assert _ids(tmp_path / "out") == _ids(m["base"])
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert out["model.embed_tokens.weight"].shape == (13, 32)


def test_model_source_takes_that_models_tokenizer(vocab_models, tmp_path):
    m = vocab_models
    _merge(_ta_doc(m, str(m["b"])), tmp_path / "out")
    assert _ids(tmp_path / "out") == _ids(m["b"])
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert out["lm_head.weight"].shape == (14, 32)


def test_align_vocab_rows_policy():
    """One holder -> its row; the base among several holders -> the base's; else the holders' mean; none -> 0."""
    r0 = torch.tensor([[1.0], [2.0], [3.0]])
    r1 = torch.tensor([[10.0], [20.0]])
    r2 = torch.tensor([[100.0], [200.0]])
    # output tokens: 0 in all; 1 only in r2; 2 in r0 (base) and r1; 3 in r1 and r2; 4 nowhere
    perms = [[0, -1, 1, -1, -1], [0, -1, 1, 0, -1], [1, 0, -1, 1, -1]]
    a0, a1, a2 = align_vocab_rows([r0, r1, r2], perms, base_index=0)
    assert a0.flatten().tolist() == [1.0, 100.0, 2.0, 105.0, 0.0]
    assert a1.flatten().tolist() == [10.0, 100.0, 20.0, 10.0, 0.0]
    assert a2.flatten().tolist() == [200.0, 100.0, 2.0, 200.0, 0.0]
    b0, _, b2 = align_vocab_rows([r0, r1, r2], perms, base_index=None)
    assert b2[2].item() == pytest.approx(11.0)  # mean of r0[1] and r1[1] when no base is an input


def test_chat_template_by_name(vocab_models, tmp_path):
    from transformers import AutoTokenizer

    m = vocab_models
    with pytest.raises(ValueError, match="vocab_size=13 but .* has 14"):  # different vocabularies need a source
        _merge(_ta_doc(m, None, chat_template="chatml"), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    _merge({"merge_method": "passthrough", "models": [{"model": str(m["base"])}], "chat_template": "chatml"},
           tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == CHAT_TEMPLATES["chatml"]
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # no tokenizer_source: the donor's (base's) vocabulary is kept
    assert tok.get_vocab() == _ids(m["base"])


def test_chat_template_auto_takes_the_most_common(vocab_models, tmp_path):
    from transformers import AutoTokenizer

    _merge(_ta_doc(vocab_models, "union", chat_template="auto"), tmp_path / "out")
    assert AutoTokenizer.from_pretrained(str(tmp_path / "out")).chat_template == ZEPHYR


def test_llama3_and_alpaca_templates_render():
    from jinja2 import Environment

    env = Environment()
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q "}, {"role": "assistant", "content": "A"}]
    out = env.from_string(CHAT_TEMPLATES["llama3"]).render(messages=msgs, bos_token="<s>", add_generation_prompt=False)
    assert out == ("<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>\n<|start_header_id|>user"
                   "<|end_header_id|>\n\nQ<|eot_id|>\n<|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>\n")
    out = env.from_string(CHAT_TEMPLATES["alpaca"]).render(messages=msgs[:2], add_generation_prompt=True)
    assert out == "S\n\n### Instruction:\nQ### Response:\n"  # as mergekit's renders


def test_tokenizer_block_tokens_and_padding(vocab_models, tmp_path):
    """tokenizer.tokens: <w> is added with a zero row, <x> forced to a's row of 'c' in every input; vocabulary
    tensors padded to a multiple of 6 with each input's mean row (mergekit/tokenizer/embed.py)."""
    m = vocab_models
    doc = {"merge_method": "linear", "tokenizer": {"source": "union", "pad_to_multiple_of": 6, "tokens": {
               "<w>": {"source": {"kind": "zero"}},
               "<x>": {"source": {"kind": "model_token", "model": str(m["a"]), "token": "c"}, "force": True}}},
           "models": [{"model": str(m["a"]), "parameters": {"weight": 1.0}},
                      {"model": str(m["b"]), "parameters": {"weight": 1.0}}]}
    report = _merge(doc, tmp_path / "out")
    out_ids = _ids(tmp_path / "out")
    assert len(out_ids) == 16 and report["vocab_size"] == 18  # a's 14 + <y>, <w>; padded to 18
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 18
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    wa = load_file(str(m["a"] / "model.safetensors"))
    ids_a = _ids(m["a"])
    e = out["model.embed_tokens.weight"]
    assert e.shape == (18, 32)
    assert torch.equal(e[out_ids["<w>"]], torch.zeros(32))
    torch.testing.assert_close(e[out_ids["<x>"]], wa["model.embed_tokens.weight"][ids_a["c"]])
    torch.testing.assert_close(e[16:], e[:16].mean(dim=0).expand(2, 32))  # linear of the inputs' mean rows = mean of the output
