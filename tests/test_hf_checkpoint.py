"""hf_checkpoint.py: Hugging Face config keys, their defaults and what is refused; our checkpoints saved and
loaded (bf16, tied, sharded, mixed dtypes), broken or foreign files named, and loading's peak memory."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_checkpoint import config_from_hf, hf_config, read_safetensors_header
from model import ModelConfig, Transformer
from test_model import ROOT, TINY, hf_model, one_thread, tiny  # noqa: F401 (one_thread: an autouse fixture)


def test_hf_config_roundtrip():
    for cfg in (ModelConfig(**TINY, rope_theta=5e5, norm_eps=1e-6),
                ModelConfig(**TINY, attn_bias=True, tie_embeddings=False)):
        hf = cfg.to_hf()
        assert hf["model_type"] == ("qwen2" if cfg.attn_bias else "llama")
        assert ModelConfig.from_hf(hf) == cfg


@pytest.mark.parametrize("key,value", [("num_local_experts", 8), ("use_sliding_window", True),
                                       ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}),
                                       ("model_type", "mistral"), ("mlp_bias", True), ("head_dim", 32),
                                       ("attention_bias", True)])
def test_unsupported_hf_config_names_the_key(key, value):
    hf = {**ModelConfig(**TINY).to_hf(), key: value}
    with pytest.raises(ValueError, match=key if key != "model_type" else "mistral"):
        ModelConfig.from_hf(hf)


def test_rope_scaling_beside_plain_rope_parameters_is_refused():
    # transformers 5 writes rope_parameters (plain); a rope_scaling added beside it still scales RoPE there
    hf = {**ModelConfig(**TINY).to_hf(), "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
          "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    with pytest.raises(ValueError, match="'rope_scaling' type 'linear'"):
        ModelConfig.from_hf(hf)
    hf["rope_scaling"] = None
    assert ModelConfig.from_hf(hf).rope_theta == 1e4


def test_real_checkpoint_configs_parse():
    # config.json of DeepSeek-R1-Distill-Qwen-1.5B: a sliding_window value, but use_sliding_window false
    r1 = {"architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 1536, "intermediate_size": 8960,
          "max_position_embeddings": 131072, "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 12,
          "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 10000,
          "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_mrope": False,
          "use_sliding_window": False, "vocab_size": 151936}
    assert ModelConfig.from_hf(r1) == ModelConfig(151936, 1536, 28, 12, 2, 8960, 131072, 10000.0, 1e-6, False, True)
    # TinyLlama-1.1B: rope_scaling null, no rope_theta key (the default 1e4), pretraining_tp 1
    tiny_llama = {"model_type": "llama", "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 5632,
                  "max_position_embeddings": 2048, "num_attention_heads": 32, "num_hidden_layers": 22,
                  "num_key_value_heads": 4, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
                  "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32000}
    assert ModelConfig.from_hf(tiny_llama) == ModelConfig(32000, 2048, 22, 32, 4, 5632, 2048, 10000.0, 1e-5, False)


def test_save_load_roundtrip_bf16_and_tied(tmp_path):
    m = tiny(tie_embeddings=True).to(torch.bfloat16)
    m.save_pretrained(tmp_path / "ckpt")
    loaded = Transformer.from_pretrained(tmp_path / "ckpt")
    assert loaded.tok_embeddings.weight.dtype == torch.bfloat16  # bf16 stays bf16
    assert loaded.output.weight is loaded.tok_embeddings.weight  # one Parameter, as in a fresh model
    assert len(list(loaded.parameters())) == len(list(m.parameters()))
    tokens = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), m(tokens))
    as_fp32 = Transformer.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in as_fp32.parameters())


def test_sharded_checkpoint_loads(tmp_path):
    hf = hf_model("qwen2", tie=False)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 2
    ours = Transformer.from_pretrained(tmp_path)
    tokens = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() < 1e-4
    # saved back into the same folder (fine-tuned): the new single file wins over the stale index, as in transformers
    with torch.no_grad():
        ours.layers[0].attention.wqkv.weight.add_(0.5)
    ours.save_pretrained(tmp_path)
    again = Transformer.from_pretrained(tmp_path)
    assert torch.equal(again.layers[0].attention.wqkv.weight, ours.layers[0].attention.wqkv.weight)


def test_broken_safetensors_files_are_named(tmp_path):
    tiny().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    for broken, match in ((b"", "is not a complete safetensors file"),
                          (data[:40], "is not a complete safetensors file"),
                          (data[:8] + b"[" + data[9:], "header is not valid JSON")):
        path.write_bytes(broken)
        with pytest.raises(ValueError, match=match) as e:
            Transformer.from_pretrained(tmp_path)
        assert str(path) in str(e.value)
    path.unlink()
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="model.safetensors.index.json is not a safetensors index"):
        Transformer.from_pretrained(tmp_path)


def test_bad_checkpoint_lists_the_tensors(tmp_path):
    tiny(tie_embeddings=False).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(7, 64)
    tensors["model.layers.0.mlp.experts.0.weight"] = torch.zeros(2)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        Transformer.from_pretrained(tmp_path)
    for name in ("model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.0.mlp.experts.0.weight"):
        assert name in str(err.value)


def test_fused_parts_stored_in_different_dtypes(tmp_path):
    # q in fp32 beside k/v in bf16 (another element size), gate in fp16 beside up in bf16 (the same size): each
    # part is read in its own dtype
    ours = tiny(tie_embeddings=False)
    ours.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    for name, dtype in (("self_attn.k_proj", torch.bfloat16), ("self_attn.v_proj", torch.bfloat16),
                        ("mlp.gate_proj", torch.float16), ("mlp.up_proj", torch.bfloat16)):
        for i in range(2):
            tensors[f"model.layers.{i}.{name}.weight"] = tensors[f"model.layers.{i}.{name}.weight"].to(dtype)
    save_file(tensors, path, metadata={"format": "pt"})
    loaded = Transformer.from_pretrained(tmp_path)
    for i in range(2):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        wqkv = torch.cat([tensors[a + p + "_proj.weight"].float() for p in "qkv"])
        w13 = torch.cat([tensors[m + p + "_proj.weight"].float() for p in ("gate", "up")])
        assert torch.equal(loaded.layers[i].attention.wqkv.weight, wqkv)
        assert torch.equal(loaded.layers[i].feed_forward.w13.weight, w13)


def test_tied_config_with_a_different_stored_lm_head_is_an_error(tmp_path):
    tiny(tie_embeddings=True).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()  # some exporters store both: fine
    save_file(tensors, path, metadata={"format": "pt"})
    assert Transformer.from_pretrained(tmp_path).cfg.tie_embeddings
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1.0  # would be dropped without a word
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="different lm_head.weight"):
        Transformer.from_pretrained(tmp_path)


def test_bad_config_json_is_named(tmp_path):
    tiny().save_pretrained(tmp_path)
    file = tmp_path / "config.json"
    cfg = json.loads(file.read_text())
    for change, msg in [({"num_attention_heads": 0}, "'num_attention_heads' must be a positive integer, got 0"),
                        ({"vocab_size": None}, "'vocab_size' must be a positive integer, got None"),
                        ({"hidden_size": 16.0}, "'hidden_size' must be a positive integer, got 16.0"),
                        ({"num_hidden_layers": True}, "'num_hidden_layers' must be a positive integer, got True"),
                        ({"num_key_value_heads": 0}, "'num_key_value_heads' must be a positive integer, got 0"),
                        ({"tie_word_embeddings": "false"}, "'tie_word_embeddings' must be true or false"),
                        ({"rope_scaling": "linear"}, "'rope_scaling' must be an object (or null)")]:
        file.write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError) as e:
            Transformer.from_pretrained(tmp_path)
        assert str(e.value).startswith(f"{file}: {msg}"), change
    file.write_text(json.dumps(cfg)[:-10])  # cut off
    with pytest.raises(ValueError) as e:
        Transformer.from_pretrained(tmp_path)
    assert str(e.value).startswith(f"{file}: ") and "line 1 column" in str(e.value)
    # an absent context length takes the architecture's default in transformers
    short = {k: v for k, v in cfg.items() if k != "max_position_embeddings"}
    assert ModelConfig.from_hf(short).max_seq_len == 2048
    assert ModelConfig.from_hf({**short, "model_type": "qwen2"}).max_seq_len == 32768
    with pytest.raises(ValueError, match="tie_embeddings must be True or False"):
        ModelConfig(tie_embeddings="false")
    with pytest.raises(ValueError, match="dim must be a positive integer, got 16.0"):
        ModelConfig(dim=16.0)


def test_safetensors_offsets_must_hold_the_tensor_and_names_one_shard(tmp_path):
    tiny().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = "model.norm.weight"
    for change in ({"dtype": "F16"}, {"data_offsets": header[name]["data_offsets"][::-1]}):
        h = json.dumps({**header, name: {**header[name], **change}}, separators=(",", ":")).encode()
        assert len(h) <= n
        h = h.ljust(n)
        path.write_bytes(data[:8] + h + data[8 + n:])
        with pytest.raises(ValueError, match=f"{path}: tensor {name}'s data_offsets"):
            Transformer.from_pretrained(tmp_path)
    # a tensor in two shards of an index: which one holds the weights is not for us to guess
    path.write_bytes(data)
    tensors = load_file(path)
    save_file(tensors, tmp_path / "a.safetensors", metadata={"format": "pt"})
    save_file({name: tensors[name]}, tmp_path / "b.safetensors", metadata={"format": "pt"})
    path.unlink()
    weight_map = {k: "a.safetensors" for k in tensors} | {"extra": "b.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match=f"tensor {name} is in both a.safetensors and b.safetensors"):
        Transformer.from_pretrained(tmp_path)


def test_unsupported_checkpoint_architecture(tmp_path):
    tiny().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "mixtral", "num_local_experts": 8}))
    with pytest.raises(ValueError, match="mixtral"):
        Transformer.from_pretrained(tmp_path)


RSS_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import model
def kb(field):
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(field)))
torch.ones(8) @ torch.ones(8)  # load the kernels before the baseline
with torch.device("meta"):  # the first meta-device model imports ~70 MB of torch code, whatever the size
    model.Transformer(model.ModelConfig(vocab_size=8, dim=8, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=8))
base = kb("VmRSS")
m = model.Transformer.from_pretrained(sys.argv[2])
print(base, kb("VmHWM"), sum(p.numel() * p.element_size() for p in m.parameters()))
"""


def test_loading_peak_memory_stays_near_file_size(tmp_path):
    # ~40 MB fp32 checkpoint, untied so that the fused q/k/v and gate/up joins are all exercised
    cfg = ModelConfig(vocab_size=8192, dim=384, n_layers=4, n_heads=6, n_kv_heads=2, hidden_dim=1024,
                      tie_embeddings=False, attn_bias=True)
    Transformer(cfg).save_pretrained(tmp_path)
    size = os.path.getsize(tmp_path / "model.safetensors")
    assert size > 30e6
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, ROOT, str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout.split()
    base_kb, peak_kb, n_bytes = map(int, out)
    assert abs(n_bytes - size) < 1e5  # the model holds the file's tensors, once
    grown = (peak_kb - base_kb) * 1024
    assert grown < 1.3 * size + 10e6, (grown / size, grown, size)


def _tiny_hf():
    return hf_config(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=48,
                                 max_seq_len=16))


def test_missing_optional_keys_take_hf_defaults():  # H3, H6
    hf = {k: v for k, v in _tiny_hf().items() if k not in ("num_key_value_heads", "rms_norm_eps")}
    got = config_from_hf(hf)
    assert got["n_kv_heads"] == 4 and got["norm_eps"] == 1e-6  # HF: kv heads = attention heads, eps 1e-6


def test_qwen2_missing_kv_heads_takes_qwen2s_default():  # HF's Qwen2Config: 32 when absent, n_heads when null
    base = {**_tiny_hf(), "model_type": "qwen2", "num_attention_heads": 64, "hidden_size": 64 * 8}
    del base["num_key_value_heads"]
    assert config_from_hf(base)["n_kv_heads"] == 32
    assert config_from_hf({**base, "num_key_value_heads": None})["n_kv_heads"] == 64
    assert config_from_hf({**base, "model_type": "llama"})["n_kv_heads"] == 64


@pytest.mark.parametrize("text", ["[]", "null", "3"])
def test_config_json_that_is_not_an_object_is_named(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=r"config\.json: a config must be a JSON object"):
        ModelConfig.load_hf(str(tmp_path))


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


def _tiny(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                             hidden_dim=48, max_seq_len=64), **kw}))


def test_old_llama_rope_buffers_are_dropped(tmp_path):
    ours = _tiny()
    ours.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # written by transformers < 4.31
    save_file(tensors, path, metadata={"format": "pt"})
    again = Transformer.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_tensor_data_cut_short_is_named(tmp_path):
    _tiny().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-4])  # the header is whole; the last tensor lacks its last 4 bytes
    with pytest.raises(ValueError, match="is truncated in model.safetensors"):
        Transformer.from_pretrained(tmp_path)


@pytest.mark.parametrize("text", ['{"weight_map": ["model.safetensors"]}', '["model.safetensors"]'])
def test_an_index_that_is_not_an_object_is_named(tmp_path, text):
    _tiny().save_pretrained(tmp_path)
    os.rename(tmp_path / "model.safetensors", tmp_path / "model-00001.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(text)
    with pytest.raises(ValueError, match="is not a safetensors index"):
        Transformer.from_pretrained(tmp_path)


def test_another_activation_is_refused():
    hf = {**ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=48).to_hf(),
          "hidden_act": "gelu"}
    with pytest.raises(ValueError, match="hidden_act"):
        ModelConfig.from_hf(hf)


def test_config_json_names_the_dtype_the_weights_are_saved_in(tmp_path):
    """config.json's torch_dtype is the weights' own (transformers' torch_dtype="auto" loads in it): a bf16 model
    saved is a bfloat16 checkpoint, not a float32 one twice its size once loaded."""
    assert hf_config(ModelConfig(**TINY), torch.bfloat16)["torch_dtype"] == "bfloat16"
    tiny().to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    tiny().save_pretrained(tmp_path / "fp32")
    assert [json.loads((tmp_path / d / "config.json").read_text())["torch_dtype"] for d in ("bf16", "fp32")] == \
        ["bfloat16", "float32"]


def test_an_absent_tie_word_embeddings_means_untied():
    """transformers' Llama and Qwen2 configs default tie_word_embeddings to false (and a diff-saved config.json
    leaves a default out): a config without the key has its own lm_head, as HF loads it."""
    hf = {k: v for k, v in _tiny_hf().items() if k != "tie_word_embeddings"}
    assert config_from_hf(hf)["tie_embeddings"] is False
    assert config_from_hf({**hf, "model_type": "qwen2"})["tie_embeddings"] is False


@pytest.mark.parametrize("theta", [None, [10000.0]])
def test_a_config_value_of_a_type_its_key_never_has_is_named(tmp_path, theta):
    """load_hf turns the TypeError of a value of the wrong type (float() of a null or a list rope_theta) into a
    ValueError naming the file, as it does for bad JSON: the caller catches one kind of error, told which file."""
    file = tmp_path / "config.json"
    file.write_text(json.dumps({**ModelConfig(**TINY).to_hf(), "rope_theta": theta}))
    with pytest.raises(ValueError) as e:
        ModelConfig.load_hf(str(tmp_path))
    assert str(e.value).startswith(f"{file}: ") and "float()" in str(e.value)


def test_save_pretrained_writes_the_state_it_is_given(tmp_path):
    """save_pretrained(path, state): the given state dict is written (a sharded model's gathered full tensors),
    not the model's own; its embedding's dtype names config.json's torch_dtype."""
    m, other = tiny(), tiny(seed=1)
    state = {k: v.to(torch.bfloat16) for k, v in other.state_dict().items()}
    m.save_pretrained(tmp_path, state=state)
    loaded = Transformer.from_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
