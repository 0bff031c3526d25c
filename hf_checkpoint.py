"""
Hugging Face Llama / Qwen2 checkpoint files for model.py: our state dict read from and written to the safetensors
tensors transformers names and shapes. Our fused tensors (q/k/v in `wqkv`, gate/up in `w13`; model.py departure 1)
are their HF parts concatenated on dim 0; config.json maps to and from ModelConfig. Transformer.from_pretrained /
save_pretrained and ModelConfig.from_hf / to_hf call this file: it is the one file of ours that model.py imports,
and it imports none.

The safetensors format: 8 bytes little-endian header length, a JSON header {name: dtype, shape, data_offsets},
then the raw little-endian tensor data. A sharded folder lists its files in model.safetensors.index.json.
"""
import json
import math
import os
from contextlib import ExitStack

import torch
from safetensors.torch import save_file


def hf_config(cfg, dtype=torch.float32):
    """The config.json of the Hugging Face LlamaForCausalLM (or Qwen2ForCausalLM with attn_bias) equal to the
    ModelConfig cfg."""
    arch = "qwen2" if cfg.attn_bias else "llama"
    hf = {"architectures": ["Qwen2ForCausalLM" if cfg.attn_bias else "LlamaForCausalLM"], "model_type": arch,
          "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
          "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
          "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
          "max_position_embeddings": cfg.max_seq_len, "rope_theta": cfg.rope_theta, "rope_scaling": None,
          "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
          "torch_dtype": str(dtype).removeprefix("torch.")}
    if arch == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    else:
        hf.update(use_sliding_window=False)
    return hf


def config_from_hf(hf):
    """ModelConfig's arguments from a Hugging Face Llama / Qwen2 config dict; refuses what model.py does not
    implement (mixture of experts, sliding windows, scaled RoPE, other activations, biases beyond Qwen2's q/k/v)."""
    if not isinstance(hf, dict):
        raise ValueError(f"a config must be a JSON object, got {type(hf).__name__}")
    arch = hf.get("model_type")
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"model_type {arch!r} is not supported (only 'llama' and 'qwen2')")
    for key in ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size"):
        if hf.get(key):
            raise ValueError(f"mixture-of-experts config ({key!r}) is not supported")
    sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    for key in sizes + ("num_key_value_heads", "max_position_embeddings", "head_dim"):  # the last three may be absent
        v = hf.get(key)
        if (key in sizes or v is not None) and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ValueError(f"{key!r} must be a positive integer, got {v!r}")
    if not isinstance(hf.get("tie_word_embeddings", False), bool):
        raise ValueError(f"'tie_word_embeddings' must be true or false, got {hf['tie_word_embeddings']!r}")
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if hf.get("use_sliding_window") or layer_types != {"full_attention"}:
        raise ValueError("sliding-window attention ('use_sliding_window' / 'layer_types') is not supported")
    for key in ("rope_parameters", "rope_scaling"):  # transformers 5 writes the first; either may scale RoPE
        rope = hf.get(key) or {}
        if not isinstance(rope, dict):
            raise ValueError(f"{key!r} must be an object (or null), got {rope!r}")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"{key!r} type {rope_type!r} is not supported (only plain RoPE)")
    rope = hf.get("rope_parameters") or {}
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias"):
        raise ValueError("only a bias-free SiLU MLP is supported ('hidden_act', 'mlp_bias')")
    if arch == "llama" and hf.get("attention_bias"):
        raise ValueError("'attention_bias' in a llama config also biases o_proj, which is not supported")
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, dim // n_heads):
        raise ValueError(f"'head_dim' {hf['head_dim']} != hidden_size / num_attention_heads is not supported")
    # HF's defaults for an absent key: Llama one kv head per attention head, Qwen2 32; null means one per head
    n_kv_heads = hf.get("num_key_value_heads", 32 if arch == "qwen2" else None) or n_heads
    return dict(vocab_size=hf["vocab_size"], dim=dim, n_layers=hf["num_hidden_layers"], n_heads=n_heads,
                n_kv_heads=n_kv_heads, hidden_dim=hf["intermediate_size"],
                max_seq_len=hf.get("max_position_embeddings") or (32768 if arch == "qwen2" else 2048),  # HF's defaults
                rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=hf.get("tie_word_embeddings", False),
                attn_bias=arch == "qwen2")


def read_hf_state(path, cfg, dtype=None, device="cpu"):
    """Our state dict from the safetensors file(s) of a Hugging Face folder, checked against cfg.

    Plain reads, no mmap, one tensor at a time: the HF parts of each of our tensors are read into one buffer that
    becomes the tensor, then it is converted and moved. dtype=None keeps the file's dtype (that of the embedding).
    """
    shards = ["model.safetensors"]
    index = os.path.join(path, "model.safetensors.index.json")
    # one file wins over an index, as in transformers: save_pretrained into a sharded folder leaves the old index
    if not os.path.exists(os.path.join(path, shards[0])) and os.path.exists(index):
        with open(index) as f:
            try:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{index} is not a safetensors index (a JSON object with a weight_map): "
                                 f"{e!r}") from None
    found = {}  # HF tensor name -> (shard, dtype, shape, byte offset, byte length)
    for shard in shards:
        for n, info in read_safetensors_header(os.path.join(path, shard)).items():
            if n in found:
                raise ValueError(f"checkpoint {path}: tensor {n} is in both {found[n][0]} and {shard}")
            found[n] = (shard, *info)
    layout = hf_layout(cfg)
    expected = {name: shape for _, parts in layout for name, shape in parts}
    # old Llama files carry RoPE buffers (dropped); some tied files also store the output matrix (checked below)
    ignored = {n for n in found if n.endswith("rotary_emb.inv_freq") or (cfg.tie_embeddings and n == "lm_head.weight")}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - ignored)
    wrong = [f"{n} {found[n][2]} != {shape}" for n, shape in sorted(expected.items())
             if n in found and found[n][2] != shape]
    if missing or unexpected or wrong:
        raise ValueError(f"checkpoint {path} does not fit its config: missing {missing}, unexpected {unexpected}, "
                         f"wrong shape {wrong}")
    dtype = dtype or SAFETENSORS_DTYPES[found["model.embed_tokens.weight"][1]]
    state = {}
    with ExitStack() as stack:
        files = {s: stack.enter_context(open(os.path.join(path, s), "rb")) for s in shards}

        def read_into(name, view):  # the bytes of HF tensor `name` into a writable memoryview of their size
            shard, _, _, offset, nbytes = found[name]
            files[shard].seek(offset)
            if files[shard].readinto(view) != nbytes:
                raise ValueError(f"checkpoint {path}: {name} is truncated in {shard}")

        def read(name):  # one HF tensor, in its file's dtype
            buf = bytearray(found[name][4])
            read_into(name, memoryview(buf))
            return torch.frombuffer(buf, dtype=SAFETENSORS_DTYPES[found[name][1]]).view(found[name][2])

        for ours, parts in layout:
            if len({found[name][1] for name, _ in parts}) > 1:  # parts stored in different dtypes: each on its own
                state[ours] = torch.cat([read(name).to(device=device, dtype=dtype) for name, _ in parts])
                continue
            buf, at = bytearray(sum(found[n][4] for n, _ in parts)), 0
            for name, _ in parts:  # a fused tensor is its HF parts back to back (concatenated on dim 0)
                read_into(name, memoryview(buf)[at : at + found[name][4]])
                at += found[name][4]
            rows = sum(part_shape[0] for _, part_shape in parts)
            t = torch.frombuffer(buf, dtype=SAFETENSORS_DTYPES[found[parts[0][0]][1]])  # shares buf, no copy
            t = t.view(rows, *parts[0][1][1:]).to(device=device, dtype=dtype)  # no copy when already right
            state[ours] = t
            del buf, t
        # a tied file may store lm_head too: fine when it is the embedding; a different matrix would be dropped
        if cfg.tie_embeddings and "lm_head.weight" in found:
            if not torch.equal(read("lm_head.weight").to(device=device, dtype=dtype), state["tok_embeddings.weight"]):
                raise ValueError(f"checkpoint {path}: config.json ties the embeddings (tie_word_embeddings) but the "
                                 "file stores a different lm_head.weight; set tie_word_embeddings to false to use it")
    return state


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors_header(path):
    """{tensor name: (dtype, shape, byte offset, byte length)} from a .safetensors file's header (format above)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > size - 8:
            raise ValueError(f"{path} is not a complete safetensors file ({size} bytes, header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ValueError(f"{path}: its safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: its safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        try:
            dtype, shape, (begin, end) = t["dtype"], tuple(t["shape"]), t["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor {name} has no dtype, shape and data_offsets in the header") from None
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        count = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
        if not all(isinstance(v, int) for v in (begin, end, *shape)) or not 0 <= begin <= end or end - begin != count:
            raise ValueError(f"{path}: tensor {name}'s data_offsets {[begin, end]} do not hold its {dtype} "
                             f"{list(shape)}")
        out[name] = (dtype, shape, 8 + n + begin, end - begin)  # offsets count from the data start
    return out


def hf_layout(cfg):
    """[(our tensor, [(HF tensor, shape), ...])]; a fused tensor of ours is its HF parts concatenated on dim 0."""
    D, F_, V, q, kv = cfg.dim, cfg.hidden_dim, cfg.vocab_size, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    layout = [("tok_embeddings.weight", [("model.embed_tokens.weight", (V, D))])]
    for i in range(cfg.n_layers):
        a, m, ours = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp.", f"layers.{i}."
        layout.append((ours + "attention.wqkv.weight", [(a + "q_proj.weight", (q, D)), (a + "k_proj.weight", (kv, D)),
                                                         (a + "v_proj.weight", (kv, D))]))
        if cfg.attn_bias:
            layout.append((ours + "attention.wqkv.bias", [(a + "q_proj.bias", (q,)), (a + "k_proj.bias", (kv,)),
                                                           (a + "v_proj.bias", (kv,))]))
        layout += [(ours + "attention.wo.weight", [(a + "o_proj.weight", (D, q))]),
                   (ours + "feed_forward.w13.weight", [(m + "gate_proj.weight", (F_, D)),
                                                        (m + "up_proj.weight", (F_, D))]),
                   (ours + "feed_forward.w2.weight", [(m + "down_proj.weight", (D, F_))]),
                   (ours + "attention_norm.weight", [(f"model.layers.{i}.input_layernorm.weight", (D,))]),
                   (ours + "ffn_norm.weight", [(f"model.layers.{i}.post_attention_layernorm.weight", (D,))])]
    layout.append(("norm.weight", [("model.norm.weight", (D,))]))
    if not cfg.tie_embeddings:
        layout.append(("output.weight", [("lm_head.weight", (V, D))]))
    return layout


def write_hf_state(path, cfg, state):
    """Write our state dict as `path`/model.safetensors in the Hugging Face layout: the fused tensors are split back
    into HF's q/k/v and gate/up parts."""
    tensors = {}
    for ours, parts in hf_layout(cfg):
        t = state[ours].detach().to("cpu")
        for (name, _), chunk in zip(parts, t.split([shape[0] for _, shape in parts])):
            # a part of a fused tensor gets its own memory (safetensors refuses shared storage)
            own = len(parts) > 1
            tensors[name] = chunk.clone(memory_format=torch.contiguous_format) if own else chunk.contiguous()
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
