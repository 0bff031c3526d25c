"""GRPO math against hand-computed values, then grpo_step end to end on a tiny model (CPU, seconds)."""
import math

import pytest
import torch

from grpo import group_advantages, grpo_loss, kl_k3, token_logprobs

# -----------------------------------------------------------------------------
# advantages


def test_advantages_hand_computed():
    r = torch.tensor([1., 0, 0, 1])  # (N=1, G=4): mean 0.5, population std 0.5 (sample std 0.577)
    assert torch.allclose(group_advantages(r, 4, eps=0), torch.tensor([1., -1, -1, 1]))
    assert torch.allclose(group_advantages(r, 4), torch.tensor([1., -1, -1, 1]) * 0.5 / (0.5 + 1e-4))
    r = torch.tensor([3., 1, 0, 0, 1, 1])  # (N=3, G=2): groups (3, 1), (0, 0), (1, 1)
    assert torch.allclose(group_advantages(r, 2, eps=0), torch.tensor([1., -1, 0, 0, 0, 0]))


def test_advantages_zero_variance_group_is_exactly_zero():
    r = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.7, 0.7])  # (N=2, G=4): the second group is flat
    adv = group_advantages(r, 4)
    assert (adv[4:] == 0).all() and (adv[:4] != 0).all()
    r = torch.full((6,), 0.1)  # mean(0.1, 0.1, 0.1) != 0.1 in fp32 rounding; still exactly 0
    assert (group_advantages(r, 3) == 0).all()


def test_advantages_no_scale_is_dr_grpo():
    r = torch.tensor([1., 0, 0, 1, 2, 2, 2, 6])  # means 0.5 and 3
    assert torch.allclose(group_advantages(r, 4, scale=False), torch.tensor([.5, -.5, -.5, .5, -1, -1, -1, 3]))


# -----------------------------------------------------------------------------
# k3 KL estimator


def test_k3_hand_computed_zero_and_nonnegative():
    assert kl_k3(logp=torch.zeros(3), ref_logp=torch.zeros(3)).sum() == 0
    k = kl_k3(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))  # u = 0.5: 0.5 + ln 2 - 1
    assert torch.allclose(k, torch.tensor([0.5 + math.log(2) - 1]))
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    assert (kl_k3(logp, ref) >= 0).all()


def test_k3_monte_carlo_mean_is_exact_kl():
    p = torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=torch.float64)  # pi_theta, tokens are sampled from it
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)  # pi_ref
    kl_pq = (p * (p / q).log()).sum()  # KL(pi_theta || pi_ref) = 0.4987
    kl_qp = (q * (q / p).log()).sum()  # the wrong direction = 0.5290
    x = torch.multinomial(p, 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    est = kl_k3(p.log()[x], q.log()[x])  # (n,)
    se = est.std() / math.sqrt(len(x))  # ~0.0015
    assert abs(est.mean() - kl_pq) < 4 * se
    assert abs(est.mean() - kl_qp) > 10 * se  # the test can tell the two directions apart


# -----------------------------------------------------------------------------
# the loss


def _clip_batch():
    # B=2, T=3. Row 0: A=+1, ratios 1.1 (inside), 1.5 (above 1+eps: clipped), 0.5 (below, but A>0: not clipped).
    # Row 1: A=-1, ratios 0.7 (below 1-eps: clipped), 1.0 (inside), 1.3 (masked out).
    ratios = torch.tensor([[1.1, 1.5, 0.5], [0.7, 1.0, 1.3]])
    old_logp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.5, -0.2]])
    logp = (old_logp + ratios.log()).requires_grad_()
    mask = torch.tensor([[1., 1, 1], [1, 1, 0]])
    adv = torch.tensor([1., -1])
    # per-token -min(rA, clip(r)A): row 0 -> -(1.1, 1.2, 0.5); row 1 -> (0.8, 1.0, masked)
    # d/dlogp: -A*r where unclipped, 0 where clipped: row 0 -> (-1.1, 0, -0.5); row 1 -> (0, 1.0, 0)
    return logp, old_logp, mask, adv, torch.tensor([[-1.1, 0, -0.5], [0, 1.0, 0]])


@pytest.mark.parametrize("agg,kw,value,denom", [
    ("seq-mean", {}, (-2.8 / 3 + 1.8 / 2) / 2, torch.tensor([[6.], [4.]])),  # per-row |o_i| * B
    ("token-mean", {}, (-2.8 + 1.8) / 5, 5.0),  # 5 unmasked tokens
    ("dr-grpo", {}, -1.0 / (2 * 3), 6.0),  # B * T
    ("dr-grpo", {"max_len": 10}, -1.0 / (2 * 10), 20.0),  # B * max_new_tokens
])
def test_loss_value_and_gradient_each_agg(agg, kw, value, denom):
    logp, old_logp, mask, adv, dper = _clip_batch()
    loss, stats = grpo_loss(logp, old_logp, None, adv, mask, clip_eps=0.2, beta=0.04, agg=agg, **kw)
    assert loss.item() == pytest.approx(value, abs=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, dper / denom, atol=1e-6)
    assert logp.grad[0, 1] == 0 and logp.grad[1, 0] == 0  # clip active: no gradient
    assert logp.grad[1, 2] == 0  # masked token
    assert stats["clip_frac_high"] == pytest.approx(1 / 5) and stats["clip_frac_low"] == pytest.approx(1 / 5)
    assert stats["ratio_mean"] == pytest.approx((1.1 + 1.5 + 0.5 + 0.7 + 1.0) / 5)
    assert stats["kl"] == 0.0 and all(isinstance(v, float) for v in stats.values())


def test_clip_higher():
    logp, old_logp, mask, adv, _ = _clip_batch()
    # eps_high 0.6: ratio 1.5 (A>0) is now inside the range; ratio 0.7 (A<0) is still clipped below
    loss, stats = grpo_loss(logp, old_logp, None, adv, mask, clip_eps=0.2, clip_eps_high=0.6, agg="token-mean")
    assert loss.item() == pytest.approx((-(1.1 + 1.5 + 0.5) + 1.8) / 5, abs=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.1, -1.5, -0.5], [0, 1.0, 0]]) / 5, atol=1e-6)
    assert stats["clip_frac_high"] == 0 and stats["clip_frac_low"] == pytest.approx(1 / 5)


def test_bad_agg_raises():
    logp, old_logp, mask, adv, _ = _clip_batch()
    with pytest.raises(ValueError):
        grpo_loss(logp, old_logp, None, adv, mask, agg="mean")


def _random_batch(B=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    lens = torch.tensor([6, 1, 4, 3])[:B]
    mask = (torch.arange(T) < lens[:, None]).float()  # (B, T) right padding
    adv = torch.randn(B, generator=g)
    return logp, mask, adv, lens


def test_on_policy_gradient_is_reinforce():
    logp, mask, adv, lens = _random_batch()
    B = len(adv)
    for old in (None, logp.detach().clone()):  # ratio == 1: the clip never binds
        logp.grad = None
        loss, stats = grpo_loss(logp, old, None, adv, mask, beta=0.0, agg="seq-mean")
        loss.backward()
        reinforce = -adv[:, None] / (lens[:, None] * B) * mask  # -A_i / (|o_i| B) per token
        assert torch.allclose(logp.grad, reinforce, atol=1e-7)
        assert stats["ratio_mean"] == 1.0 and stats["clip_frac"] == 0.0
    logp.grad = None
    grpo_loss(logp, None, None, adv, mask, beta=0.0, agg="token-mean")[0].backward()
    assert torch.allclose(logp.grad, -adv[:, None] / mask.sum() * mask, atol=1e-7)


def test_kl_term_sign_and_gradient():
    # A = 0: only the KL acts. d(beta * k3)/dlogp = beta * (1 - exp(ref - logp)); a flipped sign, or k3 with its
    # arguments swapped, fails this; and a gradient step must move logp towards ref on every token
    logp, mask, _, lens = _random_batch()
    mask = torch.ones_like(mask)
    ref = logp.detach() + torch.randn(logp.shape, generator=torch.Generator().manual_seed(1))
    beta, B, T = 0.1, logp.shape[0], logp.shape[1]
    loss, stats = grpo_loss(logp, None, ref, torch.zeros(B), mask, beta=beta, agg="seq-mean")
    k3 = kl_k3(logp.detach(), ref)
    assert loss.item() == pytest.approx(beta * k3.mean().item(), rel=1e-5)
    assert stats["kl"] == pytest.approx(k3.mean().item(), rel=1e-5)
    loss.backward()
    assert torch.allclose(logp.grad, beta * (1 - (ref - logp.detach()).exp()) / (T * B), atol=1e-7)
    stepped = logp.detach() - 0.1 * logp.grad
    assert ((stepped - ref).abs() < (logp.detach() - ref).abs()).all()


def test_beta_zero_or_no_ref_ignores_kl():
    logp, mask, adv, _ = _random_batch()
    ref = logp.detach() - 1
    a = grpo_loss(logp, None, None, adv, mask, beta=0.04)[0]
    b = grpo_loss(logp, None, ref, adv, mask, beta=0.0)[0]
    c = grpo_loss(logp, None, ref, adv, mask, beta=0.04)[0]
    assert a.item() == b.item() and c.item() > a.item()


def test_token_logprobs_matches_log_softmax_in_fp32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g) * 4
    targets = torch.randint(0, 11, (2, 5), generator=g)
    want = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, targets), want, atol=1e-5)
    got = token_logprobs(logits.bfloat16(), targets)
    assert got.dtype == torch.float32
