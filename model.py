"""
A Llama / Qwen2-compatible decoder-only transformer, a fast KV-cache sampler, and Hugging Face checkpoint I/O
(Transformer.from_pretrained / save_pretrained; the safetensors work is in hf_checkpoint.py).

The network (Llama 2, arXiv 2307.09288; Qwen2, arXiv 2407.10671): token embedding, then n_layers pre-norm blocks
    h = h + Attention(RMSNorm(h))        grouped-query attention, rotary positions (RoFormer, arXiv 2104.09864)
    h = h + SwiGLU(RMSNorm(h))           w2(silu(w1 h) * w3 h) (Shazeer, arXiv 2002.05202)
then a final RMSNorm and the output projection (optionally tied to the embedding). The arithmetic follows
transformers' LlamaForCausalLM / Qwen2ForCausalLM, so their checkpoints load unchanged: RoPE in the "rotate_half"
layout (dim i of a head pairs with dim i + head_dim/2), cos/sin and RMSNorm computed in fp32.

Departures from the Hugging Face modules (same math, different layout or plumbing):
1. q/k/v are one Linear (`wqkv`) and gate/up are one Linear (`w13`): fewer, larger matmuls. They are joined at
   load and split at save, so files keep Hugging Face's separate tensors.
2. A decode step (one new token per row) is its own function, Transformer._decode: the block's math written out
   for the batch's columns, the residual stream held as (D, B), so that each product is W @ x with no transpose
   and each residual add is fused into it (addmm). On this project's 2-core CPU, matmuls of 16-32 rows ran
   1.1-1.7x faster in that orientation than as x W^T, and a decode step is bound by per-op overhead: it reads each
   layer's tensors once per generate() and runs ~24 kernels per layer (measured, torch 2.13). Its RMSNorm takes
   the mean of squares over the columns as one product with a row of 1/D: the same reduction as torch.mean over
   dim 0, which on this CPU cost more than the rest of the norm.
3. generate() left-pads ragged prompts into one preallocated KV cache. Each row's RoPE positions start at its first
   real token (as HF's position_ids do), pad keys are masked, and a pad query attends to itself only (never an
   all-masked softmax row), so a row's completion does not depend on the rest of the batch.
4. A decode step folds the H/K query heads that share a kv head into the query axis, so K/V are never repeated.
5. Sampling draws one uniform per row and inverts the CDF: the distribution of torch.multinomial, a different
   random stream (so seeds do not reproduce HF's samples).
6. Shared prefixes are computed once. forward(tokens, start) runs the first `start` positions (or each row's own
   start[b]) once per distinct prefix and lets every row's later positions attend to its prefix's K/V. The
   prefixes and the later positions pass through each linear layer as rows of one matrix (a prefix of a few dozen
   rows alone runs its matmuls at a third of the speed); only attention tells them apart (attend_after_prefix).
   generate() prefills each distinct prompt once. GRPO samples each prompt G times, so its rollout and its loss
   passes do ~1/G of the prompt's work, and with per-row starts no row computes a position before its first
   target, nor past the longest completion of its micro-batch.
7. Rows that stopped at eos_id leave the batch: once a quarter of the rows have stopped, generate() copies the
   others' caches into a smaller batch, so a batch does not run its finished rows until its longest one ends.
   Sampling then draws fewer uniforms per step, so a seed's samples differ from a run without eos_id.
8. On CUDA a decode step is one CUDA graph (DecodeGraph): its few hundred small kernels cost more to launch from
   Python than to run (a 100M model, 16 rows: 6.6 ms a step eager on an H100, 1.4 ms as a graph). A graph cannot
   change shape between replays, so it attends over every cache column, those past the current one masked, and is
   captured again when rows leave the batch. Under autocast the matmul weights are cast once per generate(), not
   once per step.
9. On CUDA, attention never runs on cuDNN's SDPA kernel (sdpa below): it builds a plan for each new shape, and
   GRPO's and eval's shapes change with every batch. On an H100 (torch 2.11) those builds made a 100M model's GRPO
   update take 0.12-0.81 s a step over steps 2-14, where flash / memory-efficient attention took 0.18-0.24 s (README).
"""
import json
import math
import operator
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel

from hf_checkpoint import config_from_hf, hf_config, read_hf_state, write_hf_state


@dataclass
class ModelConfig:
    vocab_size: int = 4096  # V, token ids 0..V-1 (Llama-2 32000, Qwen2.5 151936)
    dim: int = 256  # D, residual width (1536 for a 1.5B model)
    n_layers: int = 4  # L, transformer blocks
    n_heads: int = 4  # H, query heads; head_dim = D / H, typically 64 or 128
    n_kv_heads: int = 2  # K, key/value heads (grouped-query attention); K = H is plain multi-head
    hidden_dim: int = 688  # F, SwiGLU width, ~8/3 D
    max_seq_len: int = 512  # longest sequence (prompt + completion) in tokens
    rope_theta: float = 10000.0  # RoPE base (Llama-2 1e4, Qwen2.5 1e6)
    norm_eps: float = 1e-5  # RMSNorm epsilon (Llama-2 1e-5, Qwen2 1e-6)
    tie_embeddings: bool = True  # output projection shares the embedding matrix
    attn_bias: bool = False  # biases on q/k/v (Qwen2, DeepSeek-R1-Distill-Qwen); never on the output projection

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "max_seq_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("tie_embeddings", "attn_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} (dim / n_heads) must be even for RoPE")
        for name in ("rope_theta", "norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")

    @property
    def matmul_params(self):
        """Parameters a token is multiplied by: per layer q/k/v/o and gate/up/down, and the output projection."""
        qkv_o = self.dim * (2 * self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        return self.n_layers * (qkv_o + 3 * self.dim * self.hidden_dim) + self.vocab_size * self.dim

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    def to_hf(self, dtype=torch.float32):
        """The config.json of the equivalent Hugging Face LlamaForCausalLM (or Qwen2ForCausalLM with attn_bias)."""
        return hf_config(self, dtype)

    @classmethod
    def from_hf(cls, hf):
        """Read a Hugging Face Llama / Qwen2 config dict; refuse features model.py does not implement."""
        return cls(**config_from_hf(hf))

    @classmethod
    def load_hf(cls, path):
        """from_hf of folder `path`'s config.json; a problem with the file is a ValueError naming it."""
        file = os.path.join(path, "config.json")
        with open(file) as f:
            try:
                return cls.from_hf(json.load(f))
            except (ValueError, TypeError) as e:  # bad JSON, or a value of a type the key never has
                raise ValueError(f"{file}: {e}") from None


def rope_tables(pos, head_dim, theta):
    """RoPE tables for integer positions pos (...,) -> cos, sin (..., head_dim), fp32 angles as in HF.

    Full width and with the sign of rotate_half folded into sin: cos = [c, c], sin = [-s, s], so that
    apply_rope is x * cos + swap_halves(x) * sin, which equals HF's x * cos + rotate_half(x) * sin.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=pos.device) / head_dim))
    freqs = pos[..., None].float() * inv_freq  # (..., hd/2), angle of position p in frequency pair i
    c, s = freqs.cos(), freqs.sin()
    return torch.cat([c, c], dim=-1), torch.cat([-s, s], dim=-1)  # (..., hd) each


def apply_rope(x, cos, sin):
    """Rotate each pair (x_i, x_{i+hd/2}) of x (B, T, n, hd) by its angle; cos, sin (B or 1, T, 1, hd)."""
    swapped = x.roll(x.size(-1) // 2, dims=-1)  # [x2, x1]; times [-s, s] it is rotate_half(x) * sin
    return torch.addcmul(x * cos.to(x.dtype), swapped, sin.to(x.dtype))  # (B, T, n, hd)


def rms_norm(x, weight, eps, dim=-1):
    """x / RMS(x) over `dim`, times weight, in HF's order: normalize in fp32, round back to x's dtype, then scale.
    Written out rather than F.rms_norm, which on CPU is a slower composite of the same ops (forward and backward)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim, keepdim=True) + eps)  # unit RMS along dim
    return weight * normed.type_as(x)


def column_rms_norm(x, weight, mean_row, eps):
    """rms_norm over dim 0 of the decode step's columns x (D, B), in five kernels: the mean of squares plus eps is
    one product with a row of 1/D (mean_row (1, D) fp32, eps (1, 1)). Same order as rms_norm (fp32, round, scale)."""
    x32 = x.float()
    r = torch.addmm(eps, mean_row, x32 * x32).rsqrt_()  # (1, B): 1 / RMS of each column
    return (x32 * r).type_as(x).mul_(weight)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)  # (..., D)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=cfg.attn_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask=None, keep=None, split=None):
        """x (B, T, D) -> (B, T, D). keep: a list that gets this call's (k, v), (B, K, T, hd) each.
        split (n, S, row_prefix): x (1, N, D) is a stream of prefixes and the rows that continue them, and mask
        is the rows' (attend_after_prefix)."""
        B, T, _ = x.shape
        H, K, hd = self.n_heads, self.n_kv_heads, self.head_dim
        # split, not slicing: its backward is one cat, where each slice's backward zero-fills a full-size grad
        qk, v = self.wqkv(x).view(B, T, H + 2 * K, hd).split([H + K, K], dim=2)  # (B, T, H+K | K, hd)
        q, k = apply_rope(qk, cos, sin).split([H, K], dim=2)  # (B, T, H | K, hd): q and k rotated in one pass
        if split is not None:
            return self.wo(attend_after_prefix(q, k, v, mask, *split).view(B, T, H * hd))
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, K, T, hd)
        if keep is not None:
            keep.append((k, v))
        # causal unless a mask is given (generate's prefill folds causality into its mask)
        y = sdpa(q.transpose(1, 2), k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=H != K)  # (B, H, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * hd))  # (B, T, D)


SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]  # no cuDNN


def sdpa(q, k, v, **kw):
    """F.scaled_dot_product_attention, on CUDA without cuDNN's kernel (departure 9)."""
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, **kw)
    with sdpa_kernel(SDPA_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v, **kw)


def attend_after_prefix(q, k, v, mask, n, S, row_prefix):
    """Attention over a stream (1, N, heads, hd) of n prefixes of S positions, then B rows of L positions, row b
    continuing prefix row_prefix[b] (N = n*S + B*L): a prefix attends causally to itself, row b to the keys of
    its prefix and its own that mask (B, 1, L, S + L) allows. q (1, N, H, hd), k and v (1, N, K, hd) -> (1, N,
    H, hd). The stream lets the linear layers run prefixes and rows as one matrix (model.py departure 6)."""
    P, B = n * S, len(row_prefix)
    H, K = q.shape[2], k.shape[2]
    pre = [t[0, :P].unflatten(0, (n, S)).transpose(1, 2) for t in (q, k, v)]  # (n, H | K, S, hd)
    q, k, v = [t[0, P:].unflatten(0, (B, -1)).transpose(1, 2) for t in (q, k, v)]  # (B, H | K, L, hd)
    y_pre = sdpa(*pre, is_causal=True, enable_gqa=H != K)  # (n, H, S, hd)
    k, v = torch.cat([pre[1][row_prefix], k], dim=2), torch.cat([pre[2][row_prefix], v], dim=2)  # (B, K, S+L, hd)
    y = sdpa(q, k, v, attn_mask=mask, enable_gqa=H != K)  # (B, H, L, hd)
    return torch.cat([y_pre.transpose(1, 2).flatten(0, 1), y.transpose(1, 2).flatten(0, 1)])[None]  # (1, N, H, hd)


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False)  # [gate (w1), up (w3)] in one matmul
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        gate, up = self.w13(x).chunk(2, dim=-1)  # (B, T, F) each
        return self.w2(F.silu(gate) * up)  # SwiGLU, (B, T, D)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, h, cos, sin, mask=None, keep=None, split=None):
        h = h + self.attention(self.attention_norm(h), cos, sin, mask, keep, split)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.checkpointing = False  # activation checkpointing in training forwards (train.py sets it)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2L) so the residual stream's variance
        # does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # unique: a tied embedding counts once

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (PaLM appendix B): 6 N_matmul + 12 L D T, with the output projection in N."""
        c = self.cfg
        return 6 * c.matmul_params + 12 * c.n_layers * c.dim * seq_len

    def _blocks(self, tokens, cos, sin, mask=None, keep=None, split=None):
        """The residual stream after the last block (before the final norm), (B, T, D). keep: a list that gets
        every layer's (k, v); split: tokens (1, N) are a stream of prefixes and rows (Attention.forward)."""
        h = self.tok_embeddings(tokens)  # (B, T, D)
        recompute = self.checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:  # keep only the block's input; its activations are recomputed in backward
                h = torch.utils.checkpoint.checkpoint(layer, h, cos, sin, mask, keep, split, use_reentrant=False)
            else:
                h = layer(h, cos, sin, mask, keep, split)
        return h

    def forward(self, tokens, start=0):
        """tokens (B, T) int64 -> logits (B, T - start, V) of positions start..T-1 (all of them by default; GRPO
        asks only for the completion's: the output projection is the largest matmul). Causal: right padding never
        changes earlier positions. start may also give each row its own first position, (B,) ints: row b's
        logits are then those of positions start[b] .. start[b] + L - 1, L = T - max(start) (GRPO's rows, whose
        completions begin at different columns: the caller pads the rows that end early). Rows whose first
        start[b] tokens are the same (GRPO's G samples of a prompt) compute those positions once (departure 6);
        the logits equal the row-by-row ones up to rounding."""
        B, T = tokens.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg.max_seq_len}")
        lo, hi = (int(v) for v in torch.aminmax(tokens)) if tokens.numel() else (0, 0)  # one pass over the ids
        if lo < 0 or hi >= self.cfg.vocab_size:
            raise ValueError(f"token ids must lie in [0, vocab_size={self.cfg.vocab_size}), got {lo}..{hi}")
        device = tokens.device
        starts = torch.as_tensor(start, device=device)
        if starts.is_floating_point() or starts.is_complex() or starts.dtype == torch.bool:
            raise ValueError(f"start must be an int or ints, got {start!r}")
        if starts.dim() > 1 or starts.numel() not in (1, B):
            raise ValueError(f"start must be one int or one per row ({B}), got shape {tuple(starts.shape)}")
        starts = starts.expand(B)  # (B,)
        if B and not 0 <= int(starts.min()) <= int(starts.max()) <= T:
            raise ValueError(f"start must lie in [0, T={T}], got {start}")
        S = int(starts.max()) if B else 0  # prefix columns
        col = torch.arange(T, device=device)
        if 0 < S < T:
            # each row's prefix is its first start[b] tokens (later columns blanked, so that rows of one prompt agree)
            prefixes, row_prefix = torch.unique(tokens[:, :S].masked_fill(col[:S] >= starts[:, None], 0), dim=0,
                                                return_inverse=True)  # (n, S), (B,)
            if len(prefixes) < B or not isinstance(start, int):
                # one stream of N = n*S + B*L positions: the distinct prefixes once, then every row's later
                # positions, which attend to their prefix's K/V (gathered per row: the gather's backward sums the
                # rows' gradients into the prefix)
                n, L = len(prefixes), T - S
                pos = starts[:, None] + torch.arange(L, device=device)  # (B, L) positions of the outputs
                stream = torch.cat([prefixes.flatten(), tokens.gather(1, pos).flatten()])[None]  # (1, N)
                cos, sin = rope_tables(torch.cat([col[:S].repeat(n), pos.flatten()]), self.cfg.head_dim,
                                       self.cfg.rope_theta)  # (N, hd) each
                keys = torch.cat([col[None, :S] < starts[:, None], torch.ones_like(pos, dtype=torch.bool)], 1)
                causal = torch.ones(L, T, dtype=torch.bool, device=device).tril(diagonal=S)  # (L, S + L)
                mask = (causal & keys[:, None, :])[:, None]  # (B, 1, L, S + L): own prefix, then causal
                h = self._blocks(stream, cos[None, :, None], sin[None, :, None], mask, split=(n, S, row_prefix))
                h = h[0, n * S:].view(B, L, -1)  # (B, L, D) the rows' positions
                return self.output(self.norm(h))  # (B, L, V)
        cos, sin = rope_tables(torch.arange(T, device=device), self.cfg.head_dim, self.cfg.rope_theta)  # (T, hd)
        h = self._blocks(tokens, cos[None, :, None], sin[None, :, None])
        return self.output(self.norm(h[:, S:]))  # (B, T - S, V)

    def _decode(self, tok, t, cos, sin, mask, caches, weights, norms, head):
        """One decode step (departure 2): the tokens tok (B,) fed at cache column t -> next-token logits (B, V).

        Block.forward's math for one position per row, written for columns: x holds the residual stream as
        (D, B), so every product is one W @ x and every residual add is fused into it (addmm). weights: per layer
        the tensors below, fetched once per generate() (a module attribute lookup costs ~1 us here). caches: per
        layer K and V, (2, B, K, S, hd). cos, sin (H+2K, 2, hd/2, B): RoPE at column t per q/k/v row, the query
        rows scaled by hd^-0.5 and the value rows left as they are (cos 1, sin 0), so one pass rotates q and k,
        scales q and keeps v. The G = H/K query heads that share a kv head are G query rows of one attention
        over that head's cache, so K/V are never repeated. mask (B*K or 1, 1, S) additive (pad keys -inf).
        norms: column_rms_norm's row of 1/D and eps, made once per generate(); head: the output projection's weight.
        t is an int, or for a CUDA graph's step a (1,) tensor: then every cache column is read, and mask must hide
        the columns past t (departure 8)."""
        H, K, hd = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        B, G = len(tok), H // K
        mean_row, eps = norms
        static = torch.is_tensor(t)
        if not static:
            mask = mask[..., : t + 1]
        x = F.embedding(tok, self.tok_embeddings.weight).t()  # (D, B)
        add_mm, norm = torch.addmm, column_rms_norm  # x + W v in one kernel; the norm's mean as a product
        if torch.is_autocast_enabled(x.device.type):  # there both would round to bf16 what forward() keeps in fp32
            add_mm = lambda x, w, v: x + torch.mm(w, v)  # noqa: E731
            norm = lambda x, w, mean_row, eps: rms_norm(x, w, self.cfg.norm_eps, dim=0)  # noqa: E731
        for (w_attn_norm, wqkv, bqkv, wo, w_ffn_norm, w13, w2), kv in zip(weights, caches):
            qkv = torch.mm(wqkv, norm(x, w_attn_norm, mean_row, eps))  # ((H+2K) hd, B)
            if bqkv is not None:
                qkv += bqkv
            qkv = qkv.view(H + 2 * K, 2, hd // 2, B)  # the two halves that RoPE pairs
            rot = torch.addcmul(qkv * cos, qkv.flip(1), sin)  # q scaled and rotated, k rotated, v unchanged
            new = rot[H:].view(2, K, hd, B).permute(0, 3, 1, 2)  # (2, B, K, hd): k and v of column t
            if static:
                kv.index_copy_(3, t, new.unsqueeze(3))
                keys, values = kv.flatten(1, 2)  # (B*K, S, hd) each
            else:
                kv.select(3, t).copy_(new)
                keys, values = kv[:, :, :, : t + 1].flatten(1, 2)  # (B*K, t+1, hd) each, views
            q = rot[:H].view(K, G, hd, B).permute(3, 0, 1, 2).reshape(B * K, G, hd)  # heads k*G + g of kv head k
            scores = torch.baddbmm(mask, q, keys.transpose(1, 2))  # (B*K, G, t+1)
            y = torch.bmm(torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype), values)
            x = add_mm(x, wo, y.view(B, H * hd).t())  # x + attention, (D, B)
            gate, up = torch.mm(w13, norm(x, w_ffn_norm, mean_row, eps)).chunk(2)  # (F, B) each
            x = add_mm(x, w2, F.silu(gate).mul_(up))  # x + SwiGLU, (D, B)
        return torch.mm(head, norm(x, self.norm.weight[:, None], mean_row, eps)).t()  # (B, V)

    def _left_pad(self, prompts, S, dtype):
        """Left-pad ragged prompts for a cache of S columns: tokens (B, P); RoPE tables (B, S, 1, hd) whose
        positions start at each row's first real token; the prefill mask (None when no row is padded) and
        _decode's additive mask, (B*K, 1, S) with -inf at pad keys, or (1, 1, S) zeros."""
        device, lens = self.tok_embeddings.weight.device, [len(p) for p in prompts]
        B, P = len(prompts), max(lens)
        tokens = torch.tensor([[0] * (P - n) + list(p) for p, n in zip(prompts, lens)], device=device)  # (B, P)
        pad = P - torch.tensor(lens, device=device)  # (B,) pad columns on the left of each row
        col = torch.arange(S, device=device)  # (S,)
        cos, sin = rope_tables((col - pad[:, None]).clamp(min=0), self.cfg.head_dim, self.cfg.rope_theta)  # (B, S, hd)
        if P == min(lens):  # plain causal attention
            return tokens, cos[:, :, None], sin[:, :, None], None, torch.zeros(1, 1, S, dtype=dtype, device=device)
        real = col[None, :] >= pad[:, None]  # (B, S) key is a real token (every generated one is)
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()  # (P, P)
        own = torch.eye(P, dtype=torch.bool, device=device)  # a pad query sees itself, so its softmax is finite
        prefill_mask = ((causal & real[:, None, :P]) | own)[:, None]  # (B, 1, P, P)
        decode_mask = torch.zeros(B, 1, S, dtype=dtype, device=device)  # additive: no bool->float per step
        decode_mask.masked_fill_(~real[:, None, :], float("-inf"))  # (B, 1, S), sliced each step
        decode_mask = decode_mask.repeat_interleave(self.cfg.n_kv_heads, dim=0)  # (B*K, 1, S), row b*K + k
        return tokens, cos[:, :, None], sin[:, :, None], prefill_mask, decode_mask

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0, eos_id=None, generator=None, seed=None,
                 cuda_graph=None):
        """Sample completions for ragged prompts (list[list[int]]; 1-D tensors and a (B, T) tensor of ids are read as
        lists) -> list[list[int]], completions only.

        temperature 0 is greedy; top_p < 1 samples from the smallest set of tokens holding top_p of the mass.
        A row stops after its first eos_id (included): an id, or a list of ids any of which ends a row (a chat
        model's end of turn and its tokenizer's end of text); eos_id=None gives exactly max_new_tokens per row.
        Randomness comes from `generator` (or a new one seeded with `seed`), so rollouts replay.
        cuda_graph: run each decode step as a CUDA graph (departure 8); None = on CUDA. True on a CPU runs the
        graph's static-shape step eagerly (the same arithmetic as on CUDA, for tests).
        """
        cfg, device = self.cfg, self.tok_embeddings.weight.device
        prompts = [p.tolist() if torch.is_tensor(p) else p for p in prompts]  # tensors hash by identity, not ids
        B, N = len(prompts), max_new_tokens
        lens = [len(p) for p in prompts]
        if B == 0:
            raise ValueError("generate needs at least one prompt")
        if min(lens) == 0:
            raise ValueError("every prompt needs at least one token")
        if N < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {N}")
        if not temperature >= 0 or not 0 < top_p <= 1:  # written so that nan fails too
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got temperature={temperature}, top_p={top_p}")
        P = max(lens)  # prompt columns after left padding
        S = P + N  # cache length
        if S > cfg.max_seq_len:
            raise ValueError(f"longest prompt {P} + max_new_tokens {N} = {S} exceeds max_seq_len {cfg.max_seq_len}")
        if min(min(p) for p in prompts) < 0 or max(max(p) for p in prompts) >= cfg.vocab_size:
            raise ValueError(f"prompt token ids must lie in [0, vocab_size={cfg.vocab_size})")
        if generator is None and seed is not None:
            generator = torch.Generator(device).manual_seed(seed)
        stops = None if eos_id is None else torch.tensor(stop_ids(eos_id), device=device)  # (n_stop,)

        dtype = self.tok_embeddings.weight.dtype
        if torch.is_autocast_enabled(device.type):  # the cache holds what the projections produce
            dtype = torch.get_autocast_dtype(device.type)
        tokens, cos, sin, prefill_mask, decode_mask = self._left_pad(prompts, S, dtype)
        H, K, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        graphed = device.type == "cuda" if cuda_graph is None else bool(cuda_graph)
        new_cache = torch.zeros if graphed else torch.empty  # a graph reads unwritten columns too (masked, not nan)
        caches = [new_cache(2, B, K, S, hd, dtype=dtype, device=device) for _ in self.layers]  # K and V

        # prefill: each distinct prompt once (GRPO samples every prompt G times), then copied to its rows' caches
        distinct = {}  # prompt -> (its index among the distinct prompts, its first row)
        for b, p in enumerate(prompts):
            distinct.setdefault(tuple(p), (len(distinct), b))
        first = torch.tensor([b for _, b in distinct.values()], device=device)  # (n,) in index order
        row_prompt = torch.tensor([distinct[tuple(p)][0] for p in prompts], device=device)  # (B,)
        mask = None if prefill_mask is None else prefill_mask[first]
        prefill = []
        h = self._blocks(tokens[first], cos[first, :P], sin[first, :P], mask, keep=prefill)  # (n, P, D)
        for kv, (k, v) in zip(caches, prefill):
            kv[0, :, :, :P], kv[1, :, :, :P] = k[row_prompt], v[row_prompt]
        logits = self.output(self.norm(h[:, -1]))[row_prompt]  # (B, V), next-token logits only

        # what _decode reads: the tensors of each layer, fetched once; RoPE tables per cache column laid out for
        # its (H+2K, 2, hd/2, B) q/k/v rows, with each row's factor (hd^-0.5 for q, 1 for k, 0 for v) and offset
        # (1 for v, so that v passes unrotated)
        mm = (lambda w: w.to(dtype)) if torch.is_autocast_enabled(device.type) else (lambda w: w)  # cast once
        weights = [(b.attention_norm.weight[:, None], mm(b.attention.wqkv.weight),
                    None if b.attention.wqkv.bias is None else b.attention.wqkv.bias[:, None], mm(b.attention.wo.weight),
                    b.ffn_norm.weight[:, None], mm(b.feed_forward.w13.weight), mm(b.feed_forward.w2.weight))
                   for b in self.layers]
        head = mm(self.output.weight)
        cos, sin = (c[:, :, 0].permute(1, 2, 0).reshape(S, 1, 2, hd // 2, B) for c in (cos, sin))  # contiguous
        factor = torch.tensor([hd**-0.5] * H + [1.0] * K + [0.0] * K, device=device).view(-1, 1, 1, 1)
        offset = torch.tensor([0.0] * (H + K) + [1.0] * K, device=device).view(-1, 1, 1, 1)
        norms = (torch.full((1, cfg.dim), 1 / cfg.dim, device=device), torch.full((1, 1), cfg.norm_eps, device=device))
        out = torch.zeros(B, N, dtype=torch.long, device=device)  # (B, N)
        done = torch.zeros(B, dtype=torch.bool, device=device)  # (b,) row has emitted eos
        live = torch.arange(B, device=device)  # (b,) the rows of `out` that the batch's rows are
        step = None  # the decode step's graph for the current batch (departure 8)
        for i in range(N):
            nxt = sample(logits, temperature, top_p, generator)  # (b,)
            out[live, i] = nxt
            if i == N - 1:
                break
            if stops is not None:  # everything after a row's eos is cut below
                done |= torch.isin(nxt, stops)
                n_done = int(done.sum())
                if n_done == len(done):
                    break
                if 4 * n_done >= len(done):  # a quarter of the rows have stopped: drop them (departure 7)
                    keep = (~done).nonzero().squeeze(1)  # (b',)
                    for j in range(len(caches)):  # layer by layer: the old and new caches never coexist whole
                        caches[j] = caches[j][:, keep]
                    if len(decode_mask) > 1:  # (b*K, 1, S), row b*K + k
                        decode_mask = decode_mask.view(len(done), -1, 1, S)[keep].flatten(0, 1)
                    live, nxt, done, cos, sin = live[keep], nxt[keep], done[keep], cos[..., keep], sin[..., keep]
                    step = None  # a smaller batch: a new graph
            t = P + i  # cache column of the token being fed
            if graphed:
                if step is None:
                    step = DecodeGraph(self, nxt, t, (cos, sin, offset, factor), decode_mask, caches, weights, norms,
                                       head, dtype)
                logits = step(nxt, t)  # (B, V)
            else:
                cos_t, sin_t = rope_at((cos, sin, offset, factor), t, dtype)  # (H+2K, 2, hd/2, B) each
                logits = self._decode(nxt, t, cos_t, sin_t, decode_mask, caches, weights, norms, head)  # (B, V)

        rows = out[:, : i + 1].tolist()
        if stops is None:
            return rows
        stop = set(stops.tolist())
        return [row[: next((j + 1 for j, t in enumerate(row) if t in stop), len(row))] for row in rows]

    @classmethod
    def from_pretrained(cls, path, dtype=None, device="cpu"):
        """Load a Hugging Face Llama / Qwen2 folder (config.json + model.safetensors or a sharded index).

        Lean: the model is built on the meta device (no random init) and takes the tensors read_hf_state makes,
        so peak memory stays near the checkpoint's size. dtype=None keeps the file's dtype.
        """
        cfg = ModelConfig.load_hf(path)
        state = read_hf_state(path, cfg, dtype, device)
        with torch.device("meta"):
            model = cls(cfg)
        if cfg.tie_embeddings:
            state["output.weight"] = state["tok_embeddings.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        if cfg.tie_embeddings:  # assign made two Parameters over one tensor; make them one again
            model.output.weight = model.tok_embeddings.weight
        return model

    def save_pretrained(self, path, state=None):
        """Write config.json + model.safetensors in the Hugging Face layout into folder `path` (created).
        state: our state dict to write instead of self.state_dict() (the gathered full tensors of a sharded model)."""
        os.makedirs(path, exist_ok=True)
        state = self.state_dict() if state is None else state
        write_hf_state(path, self.cfg, state)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(self.cfg.to_hf(state["tok_embeddings.weight"].dtype), f, indent=2)


def rope_at(rope, t, dtype):
    """_decode's cos and sin for cache column t, (H+2K, 2, hd/2, B) each, from generate's tables rope = (cos, sin,
    offset, factor): (S, 1, 2, hd/2, B) twice, then (H+2K, 1, 1, 1) twice. t is an int, or a (1,) tensor inside a
    CUDA graph (read on the device at each replay)."""
    cos, sin, offset, factor = rope
    c, s = (cos[t], sin[t]) if isinstance(t, int) else (cos.index_select(0, t)[0], sin.index_select(0, t)[0])
    return torch.addcmul(offset, c, factor).to(dtype), (s * factor).to(dtype)


class DecodeGraph:
    """Transformer._decode as one CUDA graph (departure 8), for one batch shape: made with the step's tokens and
    cache column, it runs that step eagerly (which also sets up cuBLAS outside the capture), then records the step
    reading its inputs from buffers. Each later call copies the tokens and the column into them and replays. The
    recorded step takes column t's RoPE row from the tables and masks the cache columns past t, so the same graph
    serves every column. Off CUDA nothing is recorded: each call runs the same static-shape step eagerly."""

    def __init__(self, model, tok, t, rope, mask, caches, weights, norms, head, dtype):
        tok_in, t_in = tok.clone(), torch.tensor([t], device=tok.device)  # the graph's inputs
        cols = torch.arange(mask.size(-1), device=tok.device)  # (S,)

        def step():  # refers to no self: the graph, and the caches it holds, go as soon as generate() drops it
            cos_t, sin_t = rope_at(rope, t_in, dtype)
            future = torch.zeros(cols.shape, dtype=mask.dtype, device=cols.device).masked_fill_(cols > t_in, -math.inf)
            return model._decode(tok_in, t_in, cos_t, sin_t, mask + future, caches, weights, norms, head)

        self.tok, self.t, self.step, self.graph, self.first = tok_in, t_in, step, None, None
        if tok.device.type == "cuda":
            side = _side_stream(tok.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.first = step()  # this step's logits, run eagerly
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = step()  # recorded, not run

    def __call__(self, tok, t):
        """Next-token logits (B, V) for tokens tok (B,) fed at cache column t. On CUDA the same tensor each call,
        overwritten by the next."""
        if self.first is not None:  # the step run while capturing
            logits, self.first = self.first, None
            return logits
        self.tok.copy_(tok)
        self.t.fill_(t)
        if self.graph is None:
            return self.step()
        self.graph.replay()
        return self.logits


_SIDE_STREAMS = {}


def _side_stream(device):
    """One side stream per GPU for DecodeGraph's eager step: cuBLAS keeps workspaces for every stream it has run on
    (64 MiB more per new stream on the H100), so a new stream per graph would leave more behind each time."""
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]


def stop_ids(eos_id):
    """generate's eos_id as a list of ints: None -> [], an id (int, numpy or 0-d tensor) -> [id], ids -> their list."""
    if eos_id is None:
        return []
    try:
        return [operator.index(eos_id)]
    except TypeError:
        return [operator.index(t) for t in eos_id]


def sample(logits, temperature, top_p, generator=None):
    """Next token ids (B,) from logits (B, V): greedy at temperature 0, else softmax(logits / T) cut to top_p."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float().contiguous()  # (B, V) rows: the decode step hands over a transposed view
    if temperature != 1.0:  # the max first: z / T would overflow to inf at a tiny T (and softmax give nan)
        logits = (logits - logits.amax(-1, keepdim=True)) / temperature
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    order = None
    if top_p < 1.0:  # nucleus: keep the smallest prefix of the sorted tokens whose mass reaches top_p
        probs, order = probs.sort(dim=-1, descending=True)  # (B, V) each
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0.0)  # the top token always survives
    # inverse-CDF sampling: one uniform per row, then the first token whose cumulative mass exceeds it
    cdf = probs.cumsum(dim=-1)  # (B, V), unnormalized after the top_p cut
    u = torch.rand(cdf.size(0), 1, generator=generator, device=cdf.device) * cdf[:, -1:]  # (B, 1)
    choice = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1)  # (B, 1)
    return (choice if order is None else order.gather(-1, choice)).squeeze(-1)
