import pytest

from mixmerge.analysis.layers import TensorLocation, layer_sort_key, locate


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.embed_tokens.weight", TensorLocation("embed", "embed", "weight")),
        ("lm_head.weight", TensorLocation("head", "head", "weight")),
        ("model.norm.weight", TensorLocation("norm", "norm", "weight")),
        ("model.layers.0.self_attn.q_proj.weight", TensorLocation(0, "q_proj", "weight")),
        ("model.layers.12.self_attn.k_proj.bias", TensorLocation(12, "k_proj", "bias")),  # Qwen2 biases
        ("model.layers.3.self_attn.v_proj.weight", TensorLocation(3, "v_proj", "weight")),
        ("model.layers.3.self_attn.o_proj.weight", TensorLocation(3, "o_proj", "weight")),
        ("model.layers.29.mlp.gate_proj.weight", TensorLocation(29, "gate_proj", "weight")),
        ("model.layers.29.mlp.up_proj.weight", TensorLocation(29, "up_proj", "weight")),
        ("model.layers.29.mlp.down_proj.weight", TensorLocation(29, "down_proj", "weight")),
        ("model.layers.7.input_layernorm.weight", TensorLocation(7, "norm", "weight")),
        ("model.layers.7.post_attention_layernorm.weight", TensorLocation(7, "norm", "weight")),
        ("base_model.model.model.layers.2.self_attn.q_proj.weight", TensorLocation(2, "q_proj", "weight")),
        ("model.layers.4.mystery.weight", TensorLocation(4, "other", "weight")),
    ],
)
def test_locate_llama_and_qwen_names(name, expected):
    assert locate(name) == expected


def test_layer_order_puts_embed_first_and_head_last():
    layers = ["head", 10, "norm", 2, "embed"]
    assert sorted(layers, key=layer_sort_key) == ["embed", 2, 10, "norm", "head"]
