"""The decode step and the sampler beyond what tests/test_model.py checks: norm eps under autocast, a zero-probability
token never drawn, integer stop ids, the CUDA graph's static-shape step (departure 8) against the sliced one, and no
cuDNN attention on CUDA (departure 9)."""
import gc
import weakref

import pytest
import torch

import model as model_lib
from model import ModelConfig, Transformer, sample, stop_ids

TINY = dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=160, max_seq_len=128)


def spread_weights(m):
    """m with weights of std 0.2 and norms near 1 (seeded): logits far apart, so a tiny temperature is greedy."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.2 * noise)
    return m


def _tiny(**kw):
    torch.manual_seed(0)
    return spread_weights(Transformer(ModelConfig(**{**TINY, **kw})).eval())


def test_autocast_decode_step_uses_norm_eps(monkeypatch):
    """M16: under autocast _decode's RMSNorm must add norm_eps like forward() does. A large eps (0.5, against a
    mean square ~0.04) makes a dropped eps change the logits by far more than bf16 rounding."""
    m = _tiny(norm_eps=0.5)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in (7, 3)]
    seen = []
    monkeypatch.setattr(model_lib, "sample", lambda logits, *a: seen.append(logits.clone()) or logits.argmax(-1))
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        got = m.generate(prompts, max_new_tokens=6, temperature=0)
        for b, (p, c) in enumerate(zip(prompts, got)):
            full = m(torch.tensor([p + c]))[0, len(p) - 1: -1].float()  # (6, V)
            cached = torch.stack([s[b] for s in seen]).float()
            scale = full.abs().max().item()
            assert (full - cached).abs().max().item() < 0.05 * scale + 0.05


def test_sampler_never_draws_a_zero_probability_token(monkeypatch):
    """M27: inverse-CDF sampling with searchsorted(right=True): a uniform of exactly 0 picks the first token with
    mass, never a leading token whose probability is 0."""
    logits = torch.tensor([[-1e4, -1e4, 0.0, 1.0]])  # tokens 0 and 1: probability exactly 0 in fp32
    monkeypatch.setattr(model_lib.torch, "rand", lambda *a, **k: torch.zeros(1, 1))
    assert sample(logits, 1.0, 1.0).tolist() == [2]
    assert sample(logits, 0.7, 1.0).tolist() == [2]


def test_stop_ids_refuses_a_float_id():
    """M31: an eos id must be an integer (operator.index): 2.7 is refused, not truncated to 2."""
    with pytest.raises(TypeError):
        stop_ids(2.7)
    assert stop_ids(torch.tensor(5)) == [5] and stop_ids([1, 2]) == [1, 2]


def _logits_seen(monkeypatch, m, prompts, n, **kw):
    """generate's completions and the logits each decode step handed to the sampler, (steps, B, V)."""
    seen, real = [], model_lib.sample
    monkeypatch.setattr(model_lib, "sample", lambda logits, *a: seen.append(logits.float().clone()) or real(logits, *a))
    got = m.generate(prompts, max_new_tokens=n, **kw)
    monkeypatch.setattr(model_lib, "sample", real)
    return got, seen


@pytest.mark.parametrize("kw,amp,tol", [(dict(n_kv_heads=1), False, 1e-5),
                                        (dict(attn_bias=True, tie_embeddings=False), False, 1e-5),
                                        (dict(attn_bias=True), True, 0.05),
                                        (dict(attn_bias=True), torch.bfloat16, 0.05)])
def test_graph_step_equals_the_sliced_step(monkeypatch, kw, amp, tol):
    """Departure 8 without a GPU: cuda_graph=True on a CPU runs the graph's step eagerly: every cache column read,
    the columns past t masked, column t's RoPE row picked on the device. Its logits equal the sliced step's at every
    step (ragged prompts, so pad keys are masked too), and so do greedy and seeded samples. A step that forgot to
    mask the unwritten columns (zeros) would spread attention over them and be off by far more than tol."""
    m = _tiny(**kw)
    if amp == torch.bfloat16:  # a bf16 model (a bf16 checkpoint), no autocast: the mask must be bf16 too
        m, amp = m.to(torch.bfloat16), False
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in (7, 3, 12)]
    real_empty = torch.empty  # a graph reads unwritten cache columns: they must be zeros, whatever memory held

    def dirty_empty(*a, **k):
        t = real_empty(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t
    monkeypatch.setattr(torch, "empty", dirty_empty)
    with torch.autocast("cpu", torch.bfloat16, enabled=amp), torch.no_grad():
        for sampling in (dict(temperature=0), dict(temperature=1.0, seed=5), dict(temperature=0.8, top_p=0.9, seed=6)):
            a, la = _logits_seen(monkeypatch, m, prompts, 12, cuda_graph=False, **sampling)
            b, lb = _logits_seen(monkeypatch, m, prompts, 12, cuda_graph=True, **sampling)
            assert len(la) == len(lb) == 12
            assert max((x - y).abs().max().item() for x, y in zip(la, lb)) < tol
            if m.tok_embeddings.weight.dtype == torch.float32 and not amp:  # in bf16 a near-tie may round either way
                assert a == b


def test_graph_step_is_made_again_when_rows_leave(monkeypatch):
    """The graph has one batch shape: when stopped rows leave (departure 7) a new one is made for the smaller batch,
    and the completions are those of the sliced step."""
    m = _tiny()
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in (3, 9, 5, 12, 7, 4, 10, 6)]
    free = m.generate(prompts, max_new_tokens=16, temperature=0)
    eos = max({t for f in free for t in f[:8]}, key=lambda t: sum(t in f[:8] for f in free))  # stops several rows early
    made, real = [], model_lib.DecodeGraph.__init__
    monkeypatch.setattr(model_lib.DecodeGraph, "__init__", lambda self, mdl, tok, *a: made.append(len(tok)) or
                        real(self, mdl, tok, *a))
    for sampling in (dict(temperature=0), dict(temperature=1.0, seed=3)):
        made.clear()
        want = m.generate(prompts, max_new_tokens=16, eos_id=eos, cuda_graph=False, **sampling)
        assert m.generate(prompts, max_new_tokens=16, eos_id=eos, **sampling) == want  # the default: graphs on CUDA only
        assert not made
        assert m.generate(prompts, max_new_tokens=16, eos_id=eos, cuda_graph=True, **sampling) == want
        assert made[0] == 8 and made == sorted(made, reverse=True) and len(set(made)) == len(made)  # one per size
        if sampling["temperature"] == 0:  # the eos was picked to stop rows of the greedy completions
            assert len(made) >= 2


def test_graph_step_is_freed_when_generate_returns(monkeypatch):
    """The graph holds the KV caches (and under autocast a copy of the weights): it must go when generate() returns,
    by reference count alone, not at the next garbage collection, or a GRPO update runs beside a dead rollout's
    cache (on the H100 a 1.5B run's reserved memory grew by 10 GiB when it did not)."""
    m = _tiny()
    refs, real = [], model_lib.DecodeGraph.__init__
    monkeypatch.setattr(model_lib.DecodeGraph, "__init__", lambda self, *a: refs.append(weakref.ref(self)) or
                        real(self, *a))
    gc.disable()
    try:
        m.generate([[5, 6, 7], [8]], max_new_tokens=5, cuda_graph=True, seed=0)
        assert refs and all(r() is None for r in refs)
    finally:
        gc.enable()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: CUDA graphs")
def test_cuda_graph_generate_equals_eager_on_cuda():
    """On CUDA the default is the graph (captured, then replayed): the same completions as the eager sliced step in
    fp32, greedy, seeded, and with rows leaving at an eos; under bf16 autocast the same greedy tokens but for
    near-ties."""
    dev = torch.device("cuda")
    m = _tiny(attn_bias=True).to(dev)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in (7, 3, 12, 5, 9, 4)]
    made, real = [], model_lib.DecodeGraph.__init__

    def spy(self, *a):
        real(self, *a)
        made.append(self.graph is not None)
    model_lib.DecodeGraph.__init__ = spy
    try:
        m.generate(prompts, max_new_tokens=4)  # cuBLAS's workspaces for the side and capture streams, made once
        for sampling in (dict(temperature=0), dict(temperature=1.0, seed=5), dict(temperature=1.0, seed=5, eos_id=7)):
            made.clear()
            want = m.generate(prompts, max_new_tokens=24, cuda_graph=False, **sampling)
            assert not made
            before = torch.cuda.memory_allocated()
            assert m.generate(prompts, max_new_tokens=24, **sampling) == want
            assert made and all(made)  # captured
            assert torch.cuda.memory_allocated() == before  # the graphs and caches are gone, and nothing grows
        with torch.autocast("cuda", torch.bfloat16):
            a = m.generate(prompts, max_new_tokens=24, temperature=0, cuda_graph=False)
            b = m.generate(prompts, max_new_tokens=24, temperature=0)
        same = sum(x == y for p, q in zip(a, b) for x, y in zip(p, q))
        assert same >= 0.9 * sum(map(len, a))
    finally:
        model_lib.DecodeGraph.__init__ = real


def test_cudnn_attention_is_left_out_of_sdpas_backends():
    """Departure 9, the part a CPU can check: the backends model.sdpa allows on CUDA, in order of preference."""
    from torch.nn.attention import SDPBackend
    assert model_lib.SDPA_BACKENDS == [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: SDPA's CUDA backends")
@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events")  # one profiling cycle here: nothing lost
def test_attention_on_cuda_never_uses_cudnn():
    """Departure 9: training's causal forward, GRPO's forward with per-row starts (attend_after_prefix's masked SDPA)
    and generate's masked prefill run no cuDNN attention kernel (it plans each new shape, 0.1-1 s on an H100), and
    give what the math backend gives."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile
    dev = torch.device("cuda")
    m = _tiny().to(dev)
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(3, 256, (4, 40), generator=g).to(dev)
    tokens[1, :9] = tokens[0, :9]  # rows 0 and 1 share a prefix
    starts = torch.tensor([9, 9, 12, 5], device=dev)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in (7, 3, 12)]
    with torch.autocast("cuda", torch.bfloat16), torch.no_grad():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = [m(tokens), m(tokens, start=starts)]
            m.generate(prompts, max_new_tokens=3, temperature=0)
        with sdpa_kernel([SDPBackend.MATH]):
            ref = [m(tokens), m(tokens, start=starts)]
    names = {e.key for e in prof.key_averages()}
    assert any("scaled_dot_product" in n for n in names)  # the profile saw the attention calls
    assert not [n for n in names if "cudnn" in n.lower()]
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)
