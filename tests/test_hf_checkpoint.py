"""hf_checkpoint.py: Hugging Face config keys, their defaults and what is refused; safetensors headers."""
import pytest

from hf_checkpoint import config_from_hf, hf_config, read_safetensors_header
from model import ModelConfig


def _tiny_hf():
    return hf_config(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=48,
                                 max_seq_len=16))


def test_missing_optional_keys_take_hf_defaults():  # H3, H6
    hf = {k: v for k, v in _tiny_hf().items() if k not in ("num_key_value_heads", "rms_norm_eps")}
    got = config_from_hf(hf)
    assert got["n_kv_heads"] == 4 and got["norm_eps"] == 1e-6  # HF: kv heads = attention heads, eps 1e-6


def test_rope_parameters_theta_wins_over_top_level():
    hf = {**_tiny_hf(), "rope_theta": 5e5, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert config_from_hf(hf)["rope_theta"] == 1e6
    assert config_from_hf({**_tiny_hf(), "rope_theta": 5e5})["rope_theta"] == 5e5


def test_legacy_rope_scaling_type_key_is_refused():
    with pytest.raises(ValueError, match="'rope_scaling' type 'linear'"):
        config_from_hf({**_tiny_hf(), "rope_scaling": {"type": "linear", "factor": 2.0}})


def test_sliding_layer_types_are_refused():
    assert config_from_hf({**_tiny_hf(), "layer_types": ["full_attention"]})["n_layers"] == 1
    with pytest.raises(ValueError, match="layer_types"):
        config_from_hf({**_tiny_hf(), "layer_types": ["sliding_attention"]})


@pytest.mark.parametrize("key", ["num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size"])
def test_every_moe_key_is_refused(key):
    with pytest.raises(ValueError, match=key):
        config_from_hf({**_tiny_hf(), key: 8})


def test_header_length_past_the_file_is_incomplete(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes((20).to_bytes(8, "little") + b'{"a": 1}' + b" " * 6)  # 22 bytes: header of 20 > 22 - 8
    with pytest.raises(ValueError, match="is not a complete safetensors file"):
        read_safetensors_header(str(path))
