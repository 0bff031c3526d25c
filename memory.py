"""
The memory plan of a training run, per device: printed at startup, and a refusal, with the numbers, when it
cannot fit. Arithmetic on the config only; nothing is allocated. With N parameters and W ranks
(on CPU the ranks of one machine share its RAM: each is held to its share):

    weights      4 N bytes      fp32 master weights (bf16 autocast casts a copy per matmul, counted in activations)
    gradients    4 N            fp32
    optimizer    8 N            AdamW's exp_avg and exp_avg_sq, fp32
                                (FSDP2 divides these three by W; DDP keeps a full copy on every rank)
    frozen       2 or 4 N'      the GRPO reference model (bf16 on CUDA) or a distillation teacher, no gradients
    kv cache     2 L rows K S hd x 2 or 4 bytes: K and V of every layer for one generate call (a GRPO rollout of
                 rows = prompts x G, an in-training eval batch, a distillation teacher's samples): the largest
    decode       2 M bytes under bf16 autocast: generate casts the sampling model's M matmul weights (q/k/v/o,
    weights      gate/up/down, the head) to bf16 once per call, and holds the copy as long as its cache
    activations  per token of a micro-batch, per layer, saved for backward: ~(34 D + 8 F) bytes in bf16 (twice in
                 fp32): the Korthikanti et al. 2022 count (arXiv 2205.05198, "34 sbh" without attention scores,
                 which SDPA never stores) with our SwiGLU's 8 F; with activation checkpointing only each block's
                 input (4 D) stays, plus one block recomputed. Rough: +-30%.
    logits       per token: V x (2 or 4 + 8) bytes: the logits, their fp32 copy and the fp32 log-softmax; logit
                 matching adds V x 4 x (7, or 11 for JSD): the teacher's fp32 logits and the divergence's terms
Peak = weights + gradients + optimizer + frozen + max(kv cache + decode weights, activations + logits): a
rollout's cache and copy are freed before the update's forward. CUDA's allocator adds fragmentation on top, so
we refuse above 95% of the device.
"""

import os


def estimate(mcfg, n_params, micro_tokens, *, amp=False, world=1, fsdp=False, checkpointing=False,
             frozen_params=0, frozen_bytes=None, kv_rows=0, kv_len=0, kv_caches=(), loss_logits=0, loss_vocab=None):
    """Bytes per device by part (see the docstring). mcfg: the ModelConfig; micro_tokens: tokens of one training
    micro-batch; amp: bf16 autocast (CUDA); frozen_params: reference model or teacher, frozen_bytes per parameter
    (default: 2 with amp, else 4); kv_rows x kv_len: one generate call's cache; kv_caches: more (ModelConfig,
    rows, len) generate calls, of which the largest counts; loss_logits: fp32 (tokens, loss_vocab) tensors a
    distillation loss holds besides the student's logits (loss_vocab: the teacher's, default V)."""
    act = 2 if amp else 4  # bytes of an activation element
    shard = world if fsdp else 1
    D, F, L, V = mcfg.dim, mcfg.hidden_dim, mcfg.n_layers, mcfg.vocab_size
    calls = [(c, rows, n) for c, rows, n in [(mcfg, kv_rows, kv_len), *kv_caches] if rows * n > 0]
    kv, copy = max(((kv_bytes(c, rows, n, act), 2 * c.matmul_params if amp else 0) for c, rows, n in calls),
                   key=sum, default=(0, 0))  # the generate call that holds the most
    per_layer = (34 * D + 8 * F) * act // 2  # bytes per token per layer, bf16 count scaled to the dtype
    if checkpointing:
        saved = L * 4 * D + per_layer  # each block's fp32 input, plus the one block being recomputed
    else:
        saved = L * per_layer
    return {
        "weights": 4 * n_params // shard,
        "gradients": 4 * n_params // shard,
        "optimizer": 8 * n_params // shard,
        "frozen": frozen_params * (frozen_bytes or act),
        "kv_cache": kv,
        "decode_weights": copy,
        "activations": micro_tokens * saved,
        "logits": micro_tokens * (V * (act + 8) + (loss_vocab or V) * 4 * loss_logits),
    }


def kv_bytes(mcfg, rows, length, act):
    """K and V of every layer for rows x length positions, act bytes an element."""
    return 2 * mcfg.n_layers * rows * mcfg.n_kv_heads * length * mcfg.head_dim * act


def peak(est):
    static = est["weights"] + est["gradients"] + est["optimizer"] + est["frozen"]
    return static + max(est["kv_cache"] + est["decode_weights"], est["activations"] + est["logits"])


def capacity(device):
    """Bytes the device holds: the GPU's memory, or for CPU runs the machine's RAM divided among the ranks that
    share it (torchrun's LOCAL_WORLD_SIZE)."""
    if device.type == "cuda":
        import torch
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def describe(est, cap):
    size = lambda b: f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"
    parts = ", ".join(f"{k} {size(v)}" for k, v in est.items())
    return f"memory plan per device: {parts}; peak ~{size(peak(est))} of {size(cap)}"


def check(est, cap, headroom=0.95):
    """The plan as one line; MemoryError (with the numbers and what to change) when the peak exceeds the device."""
    line = describe(est, cap)
    if peak(est) > headroom * cap:
        raise MemoryError(f"{line}: does not fit. Lower train.batch_size / grpo.micro_batch_size / "
                          "grpo.rollout_prompts, turn on train.activation_checkpointing or train.fsdp (several "
                          "GPUs), or pass --train.check_memory=false to try anyway")
    return line
