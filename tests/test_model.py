"""model.py against independent references: transformers' Llama / Qwen2 (same weights), full recomputation
instead of the KV cache, one-by-one instead of batched generation (checkpoint files: test_hf_checkpoint.py)."""
import math
import os

import numpy as np
import pytest
import torch

import model as model_lib
from model import ModelConfig, Transformer, sample

import transformers  # noqa: E402  (development dependency: requirements-dev.txt; parity tests must not skip)

TINY = dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=160, max_seq_len=128)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine thread hand-offs dominate."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize(module, seed=0):
    """Non-trivial weights everywhere (norms around 1, nonzero biases) so a dropped term shows; std 0.2 so that
    greedy decoding of a tiny model does not just repeat one token."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.2 * noise)
    return module


def hf_model(arch, tie, n_kv_heads=2, seed=0):
    cls_cfg = transformers.Qwen2Config if arch == "qwen2" else transformers.LlamaConfig
    cfg = cls_cfg(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=n_kv_heads, max_position_embeddings=128, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=tie,
                  attn_implementation="sdpa", bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cls = transformers.Qwen2ForCausalLM if arch == "qwen2" else transformers.LlamaForCausalLM
    torch.manual_seed(seed)
    return randomize(cls(cfg).float().eval(), seed)


def hf_generate(hf, prompt, n):
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return randomize(Transformer(ModelConfig(**{**TINY, **kw})).eval(), seed)


def prompts_of(lens, seed=0, vocab=256):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lens]


def record_block_batches(monkeypatch):
    """A list that gets the (rows, positions) of every Transformer._blocks call from now on."""
    batches, real = [], Transformer._blocks
    monkeypatch.setattr(Transformer, "_blocks", lambda self, tokens, *a, **k: batches.append(tuple(tokens.shape))
                        or real(self, tokens, *a, **k))
    return batches


def full_recompute_greedy(m, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(m(torch.tensor([seq]))[0, -1].argmax().item())
    return seq[len(prompt):]


# ---------------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("kw,msg", [(dict(dim=60, n_heads=8), "divisible by n_heads"),
                                    (dict(n_heads=4, n_kv_heads=3), "divisible by n_kv_heads"),
                                    (dict(dim=60, n_heads=4, n_kv_heads=2), "even"),
                                    (dict(n_layers=0), "n_layers")])
def test_bad_config_raises(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig(**{**TINY, **kw})


def test_param_and_flop_count_by_hand():
    # size S of the bench: 3.95 M params; N_matmul = L (D*(H+2K)hd + D*D + 3 D F) + V D
    cfg = ModelConfig(vocab_size=4096, dim=256, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=688)
    m = Transformer(cfg)
    n_matmul = 4 * (256 * 512 + 256 * 256 + 3 * 256 * 688) + 4096 * 256
    assert m.num_params() == n_matmul + 4 * 2 * 256 + 256  # + norms; tied embedding counted once
    assert m.flops_per_token(256) == 6 * n_matmul + 12 * 4 * 256 * 256


def test_init_for_training_from_scratch():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=512, dim=256, n_layers=8, n_heads=4, n_kv_heads=2, hidden_dim=512,
                                attn_bias=True))
    resid = 0.02 / math.sqrt(2 * 8)  # GPT-2: residual projections scaled by 1/sqrt(2L)
    for name, p in m.named_parameters():
        if name.endswith("bias"):
            assert p.abs().max() == 0, name
        elif "norm" in name:
            assert torch.all(p == 1), name
        else:
            want = resid if name.endswith(("wo.weight", "w2.weight")) else 0.02
            assert abs(p.std().item() / want - 1) < 0.05 and abs(p.mean().item()) < want / 20, name


# ---------------------------------------------------------------------------------------- parity with HF

@pytest.mark.parametrize("arch,tie,n_kv", [("llama", True, 2), ("llama", False, 4), ("qwen2", False, 2),
                                           ("qwen2", True, 1)])
def test_logits_match_hf_import(tmp_path, arch, tie, n_kv):
    hf = hf_model(arch, tie, n_kv)
    hf.save_pretrained(tmp_path)
    ours = Transformer.from_pretrained(tmp_path).eval()
    assert ours.cfg.attn_bias == (arch == "qwen2") and ours.cfg.tie_embeddings == tie
    assert ours.cfg.n_kv_heads == n_kv and ours.cfg.rope_theta == 500.0
    tokens = torch.randint(0, 256, (3, 50))
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.parametrize("attn_bias,tie", [(False, True), (False, False), (True, False)])
def test_logits_match_hf_export(tmp_path, attn_bias, tie):
    ours = tiny(attn_bias=attn_bias, tie_embeddings=tie, rope_theta=321.0)
    ours.save_pretrained(tmp_path)
    assert set(os.listdir(tmp_path)) == {"config.json", "model.safetensors"}
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").float().eval()
    assert type(hf).__name__ == ("Qwen2ForCausalLM" if attn_bias else "LlamaForCausalLM")
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-4, diff


def test_greedy_generate_matches_hf_generate(tmp_path):
    hf = hf_model("llama", tie=True)
    hf.save_pretrained(tmp_path)
    ours = Transformer.from_pretrained(tmp_path)
    prompts = prompts_of([5, 9, 1])
    got = ours.generate(prompts, max_new_tokens=12, temperature=0)
    assert got == [hf_generate(hf, p, 12) for p in prompts]
    # and HF's own left-padded batch (attention mask, position ids from it) agrees with our ragged batch
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    assert got == out[:, P:].tolist()


def test_forward_start_gives_the_later_positions():
    m = tiny()
    x = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert torch.allclose(m(x, start=7), m(x)[:, 7:], atol=1e-6)


def test_rows_sharing_a_prefix_compute_it_once(monkeypatch):
    """forward(tokens, start): rows whose first `start` tokens agree (GRPO's G samples of a prompt) run those
    positions once per distinct prefix; logits and gradients equal those of each row alone, with and without
    activation checkpointing."""
    m = tiny().train()
    p, q = prompts_of([9, 9], seed=1)
    tails = prompts_of([8] * 5, seed=2)
    rows = torch.tensor([p + tails[0], p + tails[1], q + tails[2], p + tails[3], q + tails[4]])  # (5, 17)
    start = 7  # the first logit asked for; the rows agree on the 9 prompt tokens
    batches = record_block_batches(monkeypatch)
    weights = torch.randn(5, 10, 256, generator=torch.Generator().manual_seed(3))

    def run(batched):
        m.zero_grad(set_to_none=True)
        logits = m(rows, start=start) if batched else torch.cat([m(r[None], start=start) for r in rows])
        (logits * weights).sum().backward()
        return logits.detach(), {n: t.grad.clone() for n, t in m.named_parameters()}

    alone, grads_alone = run(batched=False)
    assert batches == [(1, 17)] * 5
    for checkpointing in (False, True):
        m.checkpointing = checkpointing
        batches.clear()
        shared, grads = run(batched=True)
        assert batches == [(1, 2 * 7 + 5 * 10)]  # one stream: the 2 distinct prefixes, then every row's 10 later
        assert (shared - alone).abs().max().item() < 1e-5
        for n, g in grads.items():
            assert (g - grads_alone[n]).abs().max().item() <= 1e-5 * grads_alone[n].abs().max().item(), n


def test_per_row_starts_equal_each_row_alone(monkeypatch):
    """forward(tokens, start=[s_b]): row b's logits are those of its positions s_b .. s_b + L - 1, L = T - max(s);
    rows of one prompt share its prefix pass; a row that starts at 0 has no prefix. Logits and gradients equal
    each row's own forward(row, start=s_b)."""
    m = tiny().train()
    p, q = prompts_of([9, 4], seed=5)
    tails = prompts_of([6] * 5, seed=6)
    rows = [p + tails[0], q + tails[1], p + tails[2], q + tails[3], tails[4]]  # lengths 15, 10, 15, 10, 6
    starts = [8, 3, 8, 3, 0]  # each row's last prompt token
    L = 6
    T = max(starts) + L  # inputs only (a row's last token is only a target); rows that end early are padded
    tokens = torch.tensor([r[:T] + [0] * (T - len(r[:T])) for r in rows])
    batches = record_block_batches(monkeypatch)
    weights = torch.randn(5, L, 256, generator=torch.Generator().manual_seed(7))

    m.zero_grad(set_to_none=True)
    logits = m(tokens, start=starts)  # (5, L, V)
    assert batches == [(1, 3 * 8 + 5 * L)]  # prefixes p[:8], q[:3] (+ blank), none; then L positions per row
    (logits * weights).sum().backward()
    grads = {n: t.grad.clone() for n, t in m.named_parameters()}

    m.zero_grad(set_to_none=True)
    alone = torch.cat([m(torch.tensor([r[:s + L]]), start=s) for r, s in zip(rows, starts)])  # rows alone, unpadded
    (alone * weights).sum().backward()
    assert (logits - alone).abs().max().item() < 1e-5
    for n, g in grads.items():
        assert (g - m.get_parameter(n).grad).abs().max().item() <= 1e-5 * g.abs().max().item(), n
    with pytest.raises(ValueError, match="start"):
        m(tokens, start=[0, 0, 0, 0, T + 1])
    with pytest.raises(ValueError, match="one per row"):
        m(tokens, start=[0, 0, 0])


def test_right_padding_does_not_change_earlier_positions():
    m = tiny()
    x = torch.randint(0, 256, (2, 30))
    padded = torch.cat([x, torch.zeros(2, 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert torch.allclose(m(x), m(padded)[:, :30], atol=1e-5)


# ---------------------------------------------------------------------------------------------- generate

@pytest.mark.parametrize("kw,dtype,tol", [(dict(n_kv_heads=1), torch.float32, 1e-4),
                                         (dict(attn_bias=True, tie_embeddings=False), torch.float32, 1e-4),
                                         (dict(attn_bias=True), torch.bfloat16, 0.25),
                                         (dict(attn_bias=True), "autocast", 0.25)])
def test_kv_cache_equals_full_recompute(monkeypatch, kw, dtype, tol):
    """The decode step (Transformer._decode) against forward(): MQA; Qwen2's q/k/v biases with an untied output;
    a bf16 model (as loaded from a bf16 checkpoint): its forward alone differs from the fp32 one by up to ~0.23 on
    these logits of magnitude ~5, so 0.25 is bf16 rounding; a dropped bias or a misplaced key is off by ~1. And an
    fp32 model under bf16 autocast (as train.py samples on CUDA), both passes autocast."""
    amp = dtype == "autocast"
    m = tiny(**kw).to(torch.float32 if amp else dtype)
    prompts = prompts_of([7, 3, 12])
    seen = []  # the logits each decode step samples from, (B, V) per step
    monkeypatch.setattr(model_lib, "sample", lambda logits, *a: seen.append(logits.clone()) or logits.argmax(-1))
    with torch.autocast("cpu", torch.bfloat16, enabled=amp), torch.no_grad():
        got = m.generate(prompts, max_new_tokens=10, temperature=0)
        for b, (p, c) in enumerate(zip(prompts, got)):
            full = m(torch.tensor([p + c]))[0, len(p) - 1: -1].float()  # (10, V): logits that predicted c
            cached = torch.stack([s[b] for s in seen]).float()  # (10, V)
            assert (full - cached).abs().max().item() < tol
            if dtype == torch.float32:  # in bf16 a near-tie may round either way
                assert c == full_recompute_greedy(m, p, 10)


def naive_attention(q, k, v, attn_mask=None, is_causal=False, enable_gqa=False):
    """softmax(q k^T / sqrt(d) + mask) v, written out; a fully masked query row gives NaN here."""
    if enable_gqa:
        k, v = (t.repeat_interleave(q.size(1) // k.size(1), dim=1) for t in (k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))  # (..., Tq, Tk)
    if is_causal:
        attn_mask = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    return torch.softmax(scores, dim=-1) @ v


def test_ragged_batch_equals_one_by_one():
    m = tiny()
    prompts = prompts_of([1, 17, 4, 9, 30])
    batched = m.generate(prompts, max_new_tokens=15, temperature=0)
    assert batched == [m.generate([p], max_new_tokens=15, temperature=0)[0] for p in prompts]
    assert all(len(c) == 15 for c in batched)


def test_generate_prefills_each_distinct_prompt_once(monkeypatch):
    m = tiny()
    p, q = prompts_of([5, 12], seed=4)
    prompts = [p, q, p, p, q]
    batches = record_block_batches(monkeypatch)
    got = m.generate(prompts, max_new_tokens=10, temperature=0)
    assert batches == [(2, 12)]
    batches.clear()
    alone = {tuple(x): m.generate([x], max_new_tokens=10, temperature=0)[0] for x in (p, q)}
    assert got == [alone[tuple(x)] for x in prompts]
    assert batches == [(1, 5), (1, 12)]


def test_sdpa_matches_naive_attention(monkeypatch):
    m = tiny()
    tokens = torch.randint(0, 256, (2, 33))
    prompts = prompts_of([1, 17, 4, 9, 30])
    with torch.no_grad():
        fast_logits = m(tokens)
    fast = m.generate(prompts, max_new_tokens=15, temperature=0)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", naive_attention)
    with torch.no_grad():
        assert (m(tokens) - fast_logits).abs().max().item() < 1e-5
    # a pad query that saw no key would turn NaN here, and its NaN value would poison the real rows
    assert m.generate(prompts, max_new_tokens=15, temperature=0) == fast


def test_eos_stops_each_row_and_is_included(monkeypatch):
    m = tiny()
    prompts = prompts_of([6, 11])
    free = m.generate(prompts, max_new_tokens=12, temperature=0)
    k = next(i for i in range(2, 12) if free[0][i] not in free[0][:i])  # row 0 first emits eos at step k >= 2
    eos = free[0][k]  # row 1 may or may not emit it
    got = m.generate(prompts, max_new_tokens=12, temperature=0, eos_id=eos)
    for f, g in zip(free, got):
        cut = f[: f.index(eos) + 1] if eos in f else f
        assert g == cut and g.count(eos) <= 1
    # once every row has stopped, no more decode steps run
    calls = []
    real = Transformer._decode
    monkeypatch.setattr(Transformer, "_decode", lambda self, *a: calls.append(1) or real(self, *a))
    m.generate([prompts[0]], max_new_tokens=12, temperature=0, eos_id=eos)
    assert len(calls) == k  # the decode steps feeding tokens 0..k-1


def test_a_list_of_eos_ids_stops_a_row_at_the_first_of_any():
    """eos_id=[a, b] (a chat model's end of turn and its tokenizer's end of text): each row ends at its first a or b."""
    m = tiny()
    prompts = prompts_of([6, 11, 4, 9], seed=5)
    free = m.generate(prompts, max_new_tokens=12, temperature=0)
    a, b = free[0][3], free[1][5]  # two tokens the greedy rows emit
    got = m.generate(prompts, max_new_tokens=12, temperature=0, eos_id=[a, b])
    cut = lambda f: f[: next((j + 1 for j, t in enumerate(f) if t in (a, b)), len(f))]  # noqa: E731
    assert got == [cut(f) for f in free]
    assert len(got[0]) <= 4 and len(got[1]) <= 6 and got != free
    assert m.generate(prompts, max_new_tokens=12, temperature=0, eos_id=[a]) == \
        m.generate(prompts, max_new_tokens=12, temperature=0, eos_id=a)
    for one_id in (np.int64(a), torch.tensor(a), (a,), torch.tensor([a])):  # an id or ids of any integer kind
        assert m.generate(prompts, max_new_tokens=12, temperature=0, eos_id=one_id) == \
            m.generate(prompts, max_new_tokens=12, temperature=0, eos_id=a)
    # the second id of the list stops a row too: no decode step runs after every row has stopped
    one = [prompts[0]]
    k = next(i for i in range(2, 12) if free[0][i] not in free[0][:i])
    never = next(t for t in range(m.cfg.vocab_size) if t not in free[0])
    calls, real = [], Transformer._decode
    Transformer._decode = lambda self, *args: calls.append(1) or real(self, *args)
    try:
        assert m.generate(one, max_new_tokens=12, temperature=0, eos_id=[never, free[0][k]]) == [free[0][: k + 1]]
    finally:
        Transformer._decode = real
    assert len(calls) == k


def test_rows_that_stopped_leave_the_batch(monkeypatch):
    """Departure 7: once a quarter of the rows have emitted eos, the decode batch shrinks to the others, and every
    row's greedy completion is still the one it gets alone (ragged prompts, so the pad mask is compacted too)."""
    m = tiny()
    prompts = prompts_of([3, 9, 5, 12, 7, 4, 10, 6], seed=3)
    free = m.generate(prompts, max_new_tokens=16, temperature=0)
    firsts = {}  # token -> {row: the step at which the row first emits it}
    for r, f in enumerate(free):
        for step, tok in enumerate(f):
            firsts.setdefault(tok, {}).setdefault(r, step)

    def batch_sizes(first):  # the rule: after each step's sample, drop the stopped rows once they are a quarter
        alive, stopped, sizes = set(range(len(prompts))), set(), []
        for step in range(15):  # token `step` is sampled, then fed by a decode step of the rows still there
            stopped |= {r for r in alive if first.get(r) == step}
            if 4 * len(stopped) >= len(alive):
                alive, stopped = alive - stopped, set()
            sizes.append(len(alive))
        return sizes
    eos = max(firsts, key=lambda tok: len(set(batch_sizes(firsts[tok]))))  # the eos that shrinks the batch most
    want = batch_sizes(firsts[eos])
    assert len(set(want)) >= 3  # at least two shrinks, so row bookkeeping across shrinks is exercised
    sizes, real = [], Transformer._decode
    monkeypatch.setattr(Transformer, "_decode", lambda self, tok, *a: sizes.append(len(tok)) or real(self, tok, *a))
    got = m.generate(prompts, max_new_tokens=16, temperature=0, eos_id=eos)
    assert sizes == want
    assert got == [f[: f.index(eos) + 1] if eos in f else f for f in free]
    assert got == [m.generate([p], max_new_tokens=16, temperature=0, eos_id=eos)[0] for p in prompts]
    # sampling: same seed, same samples; every row ends at its first eos or at max_new_tokens
    a = m.generate(prompts, max_new_tokens=16, temperature=1.0, eos_id=eos, seed=3)
    assert a == m.generate(prompts, max_new_tokens=16, temperature=1.0, eos_id=eos, seed=3)
    assert all((c[-1] == eos and c.count(eos) == 1) or (len(c) == 16 and eos not in c) for c in a)


def test_no_eos_gives_exactly_max_new_tokens():
    m = tiny()
    got = m.generate(prompts_of([3, 8, 5]), max_new_tokens=9, temperature=1.0, seed=0)
    assert [len(c) for c in got] == [9, 9, 9]
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_same_seed_same_samples():
    m = tiny()
    prompts = prompts_of([4, 10])
    a = m.generate(prompts, 20, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = m.generate(prompts, 20, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    c = m.generate(prompts, 20, temperature=1.0, top_p=0.9, seed=7)
    d = m.generate(prompts, 20, temperature=1.0, top_p=0.9, seed=8)
    assert a == b == c and a != d


def test_sampler_follows_probabilities_and_top_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, 4)  # (B, V): 20000 independent draws
    g = torch.Generator().manual_seed(0)
    freq = torch.bincount(sample(logits, 1.0, 1.0, g), minlength=4) / 20000
    assert torch.allclose(freq, probs, atol=0.015), freq
    # top_p 0.8: {0.5, 0.3} hold 0.8, the rest is cut and the kept mass renormalized
    freq = torch.bincount(sample(logits, 1.0, 0.8, g), minlength=4) / 20000
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0, 0]), atol=0.015), freq
    # temperature 0.5 squares the odds: p^2 / sum p^2
    freq = torch.bincount(sample(logits, 0.5, 1.0, g), minlength=4) / 20000
    assert torch.allclose(freq, probs ** 2 / (probs ** 2).sum(), atol=0.015), freq
    assert sample(logits[:3], 0, 1.0).tolist() == [0, 0, 0]
    assert sample(logits[:3], 1.0, 1e-6, g).tolist() == [0, 0, 0]  # tiny top_p is greedy
    # the smallest set that holds top_p: at an exact tie (0.5 reached by the first token) nothing more is kept
    tie = torch.tensor([0.5, 0.25, 0.25]).log().expand(2000, 3)
    assert sample(tie, 1.0, 0.5, g).eq(0).all()
    # a tiny temperature is greedy, not an overflow to inf (softmax nan, the last id)
    assert sample(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 1e-40, 1.0, g).tolist() == [1]


@pytest.mark.parametrize("call,msg", [
    (lambda m: m(torch.tensor([[0, 256]])), "vocab_size=256"),
    (lambda m: m(torch.tensor([[-1, 3]])), "vocab_size=256"),
    (lambda m: m(torch.zeros(1, 129, dtype=torch.long)), "max_seq_len 128"),
    (lambda m: m.generate([[1, 2], []], 4), "at least one token"),
    (lambda m: m.generate([], 4), "at least one prompt"),
    (lambda m: m.generate([[1, 2]], 4, temperature=float("nan")), "temperature"),
    (lambda m: m(torch.tensor([[1, 2, 3]]), start=1.0), "start must be an int"),
    (lambda m: m(torch.tensor([[1, 2, 3]]), start=[1, 2.5]), "start must be an int"),
    (lambda m: m.generate([[1, 2]], 4, top_p=0.0), "top_p"),
    (lambda m: m.generate([[1, 2]], 4, temperature=-1.0), "temperature"),
    (lambda m: m.generate([[1] * 100], 29), "max_seq_len 128"),
    (lambda m: m.generate([[1, 256]], 4), "vocab_size=256"),
])
def test_bad_inputs_raise(call, msg):
    with pytest.raises(ValueError, match=msg):
        call(tiny())


def test_tensor_prompts_and_empty_batches():
    """generate reads a (B, T) tensor or 1-D tensors as lists of ids (tensors hash by identity, which the
    distinct-prompt prefill must not see); forward returns empty logits for an empty batch or sequence."""
    m = tiny()
    prompts = prompts_of([5, 5, 5], seed=8)
    prompts[2] = prompts[0]  # a repeated prompt: prefilled once
    want = m.generate(prompts, max_new_tokens=6, temperature=0)
    assert m.generate(torch.tensor(prompts), max_new_tokens=6, temperature=0) == want
    assert m.generate([torch.tensor(p) for p in prompts], max_new_tokens=6, temperature=0) == want
    with torch.no_grad():
        assert m(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 5, 256)
        assert m(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 256)
