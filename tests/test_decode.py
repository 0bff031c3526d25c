"""The decode step and the sampler beyond what tests/test_model.py checks: norm eps under autocast, a zero-probability
token never drawn, integer stop ids."""
import pytest
import torch

import model as model_lib
from model import ModelConfig, Transformer, sample, stop_ids

TINY = dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=160, max_seq_len=128)


def _tiny(**kw):
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**{**TINY, **kw})).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.2 * noise)
    return m


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
