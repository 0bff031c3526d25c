"""model.py at its edges: the prefill's rows for repeated ragged prompts, per-row starts and prefix sharing, the
whole context usable, the fp32 decode's norm eps, sampling ties and precision, an eos first token, bad inputs."""
import pytest
import torch

from model import ModelConfig, Transformer, sample
from test_decode import _logits_seen
from test_model import TINY, prompts_of, tiny

step_logits = _logits_seen  # generate's completions and the logits each step sampled from


def test_repeated_ragged_prompts_whose_first_rows_are_not_the_first_n(monkeypatch):
    """The prefill takes each distinct prompt's mask and RoPE rows from its FIRST ROW (prefill_mask[first],
    cos[first]), not from rows 0..n-1. [p, p, q, r, q] puts q's first row at 2 and r's at 3."""
    m = tiny()
    p, q, r = prompts_of([4, 11, 7], seed=9)
    prompts = [p, p, q, r, q]
    got, seen = step_logits(monkeypatch, m, prompts, 6, temperature=0)
    for b, x in enumerate(prompts):
        alone, seen1 = step_logits(monkeypatch, m, [x], 6, temperature=0)
        assert got[b] == alone[0]
        assert max((s[b] - s1[0]).abs().max().item() for s, s1 in zip(seen, seen1)) < 1e-4


def test_per_row_starts_without_a_shared_prefix_equal_each_row_alone():
    """start=[3, 7] on rows with distinct prefixes still gives row b its positions s_b .. s_b + L - 1."""
    m = tiny()
    rows = torch.tensor(prompts_of([12, 12], seed=11))
    starts, L = [3, 7], 12 - 7
    with torch.no_grad():
        got = m(rows, start=starts)
        want = torch.stack([m(rows[b:b + 1, : s + L], start=s)[0] for b, s in enumerate(starts)])
    assert got.shape == (2, L, 256)
    assert (got - want).abs().max().item() < 1e-5


def test_prefix_sharing_ignores_tokens_from_a_rows_start_on(monkeypatch):
    """Rows 0 and 1 agree on their first start=4 tokens and differ at column 4: one prefix pass for both."""
    m = tiny()
    p = prompts_of([4], seed=12)[0]
    a, b, c = prompts_of([8, 8, 10], seed=13)
    tokens = torch.tensor([p + a[:6], p + b[:6], c])  # (3, 10)
    starts = [4, 4, 8]
    shapes, real = [], Transformer._blocks
    monkeypatch.setattr(Transformer, "_blocks", lambda self, t, *x, **k: shapes.append(tuple(t.shape)) or
                        real(self, t, *x, **k))
    with torch.no_grad():
        m(tokens, start=starts)
    assert shapes == [(1, 2 * 8 + 3 * 2)]  # prefixes p (+ blanks) and c[:8]; L = 2 positions per row


def test_model_config_refuses_a_bool_size():
    """True is an int to isinstance; a size of True is refused, as the HF reader refuses it."""
    with pytest.raises(ValueError, match="n_layers must be a positive integer, got True"):
        ModelConfig(**{**TINY, "n_layers": True})


def test_the_whole_context_is_usable():
    """A sequence of exactly max_seq_len tokens is allowed, in forward() and in generate()."""
    m = tiny()
    with torch.no_grad():
        assert m(torch.zeros(1, 128, dtype=torch.long)).shape == (1, 128, 256)
    assert [len(c) for c in m.generate([[5] * 100], 28, temperature=0)] == [28]


@pytest.mark.parametrize("call,msg", [
    (lambda m: m.generate([[-1, 2]], 4), "vocab_size=256"),
    (lambda m: m.generate([[1, 2]], 0), "max_new_tokens must be >= 1"),
    (lambda m: m.generate([[1, 2]], 4, top_p=1.5), "top_p"),
    (lambda m: m(torch.tensor([[1, 2, 3]]), start=torch.tensor([[1]])), "one per row"),
])
def test_more_bad_inputs_raise_value_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call(tiny())


def test_greedy_tie_takes_the_lowest_id():
    """Temperature 0 breaks an exact tie as argmax / HF greedy does: the first of the tied ids."""
    assert sample(torch.tensor([[0.0, 2.0, 2.0, 1.0], [3.0, 3.0, 3.0, 3.0]]), 0, 1.0).tolist() == [1, 0]


def test_fp32_decode_step_uses_norm_eps(monkeypatch):
    """Without autocast _decode's column_rms_norm adds the config's norm_eps (0.5 here, far from the default
    1e-5), so its logits equal forward()'s."""
    m = tiny(norm_eps=0.5)
    prompts = prompts_of([7, 3])
    got, seen = step_logits(monkeypatch, m, prompts, 6, temperature=0)
    with torch.no_grad():
        for b, (p, c) in enumerate(zip(prompts, got)):
            full = m(torch.tensor([p + c]))[0, len(p) - 1: -1]
            assert (full - torch.stack([s[b] for s in seen])).abs().max().item() < 1e-4


def test_a_row_whose_first_token_is_eos_runs_no_decode_step(monkeypatch):
    """The eos check covers the first sampled token too: a lone row that starts with eos stops at once."""
    m = tiny()
    p = prompts_of([6])[0]
    eos = m.generate([p], 1, temperature=0)[0][0]
    calls, real = [], Transformer._decode
    monkeypatch.setattr(Transformer, "_decode", lambda self, *a: calls.append(1) or real(self, *a))
    assert m.generate([p], 12, temperature=0, eos_id=eos) == [[eos]]
    assert calls == []


def test_bf16_logits_are_sampled_in_fp32():
    """Under autocast the decode step hands bf16 logits to sample(); the softmax and CDF are taken in fp32, so
    the draws equal those from the same values in fp32 (a bf16 cumsum over many tokens would shift them)."""
    logits = (3 * torch.randn(500, 2000, generator=torch.Generator().manual_seed(0))).bfloat16()
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9)):
        a = sample(logits, temperature, top_p, torch.Generator().manual_seed(1))
        b = sample(logits.float(), temperature, top_p, torch.Generator().manual_seed(1))
        assert torch.equal(a, b)


def test_start_at_either_end_of_its_range():
    """start lies in [0, T]: start = T (an int, or per-row starts whose largest is T, rows sharing a prefix) gives
    empty logits (B, 0, V), not an error; a negative start is refused, not read as Python's count from the end."""
    m = tiny()
    x = torch.tensor(prompts_of([10, 10, 10], seed=14))
    x[1] = x[0]  # rows 0 and 1 share every prefix
    with torch.no_grad():
        for start in (10, [10, 10, 10], [4, 10, 10]):
            assert m(x, start=start).shape == (3, 0, 256), start
        for start in (-1, [-1, 2, 3]):
            with pytest.raises(ValueError, match=r"start must lie in \[0, T=10\]"):
                m(x, start=start)
