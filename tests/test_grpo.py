"""GRPO math against hand-computed values, then grpo_step end to end on a tiny model (CPU, seconds)."""
import copy
import math

import pytest
import torch

import grpo as grpo_module
from grpo import (UPDATE_KEYS, GRPOConfig, build_batch, completion_logprobs, group_advantages, grpo_loss, grpo_step,
                  grpo_update, kl_k3, maybe_update_ref, rollout, token_logprobs)
from test_grpo_update import StubPolicy

# -----------------------------------------------------------------------------
# advantages


def test_advantages_hand_computed():
    r = torch.tensor([1., 0, 0, 1])  # (N=1, G=4): mean 0.5, population std 0.5 (sample std 0.577)
    assert torch.allclose(group_advantages(r, 4, eps=0), torch.tensor([1., -1, -1, 1]))
    assert torch.allclose(group_advantages(r, 4), torch.tensor([1., -1, -1, 1]) * 0.5 / (0.5 + 1e-4))
    r = torch.tensor([3., 1, 0, 0, 1, 1])  # (N=3, G=2): groups (3, 1), (0, 0), (1, 1)
    assert torch.allclose(group_advantages(r, 2, eps=0), torch.tensor([1., -1, 0, 0, 0, 0]))
    # eps goes on the std, not the variance: a group of close rewards, mean 5e-4 and std 5e-4, gives
    # 5e-4 / (5e-4 + 1e-4) = 5/6 (5e-4 / sqrt(2.5e-7 + 1e-4) would be 0.0499)
    assert group_advantages(torch.tensor([0.0, 1e-3]), 2).tolist() == pytest.approx([-5 / 6, 5 / 6], rel=1e-4)


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


def test_masked_positions_never_turn_the_loss_nan():
    # a masked position (prompt, padding) may hold any log-prob: a trained model can give padding exp(-1000);
    # exp(ref - logp) would overflow to inf there, and inf * 0 is NaN in the loss and in the gradient
    logp, mask, adv, _ = _random_batch()
    ref, old = logp.detach() - 0.1, logp.detach() + 0.05
    wild = logp.detach().masked_fill(mask == 0, -1000.0).requires_grad_()
    tame = logp.detach().requires_grad_()
    for agg in ("seq-mean", "token-mean", "dr-grpo"):
        a = grpo_loss(wild, old, ref, adv, mask, agg=agg)[0]
        b = grpo_loss(tame, old, ref, adv, mask, agg=agg)[0]
        a.backward(), b.backward()
        assert torch.isfinite(a) and a.item() == pytest.approx(b.item(), rel=1e-6)
        assert torch.equal(wild.grad, tame.grad) and (wild.grad[mask == 0] == 0).all()
        wild.grad = tame.grad = None


def test_token_logprobs_matches_log_softmax_in_fp32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g) * 4
    targets = torch.randint(0, 11, (2, 5), generator=g)
    want = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, targets), want, atol=1e-5)
    half = logits.bfloat16()
    got = token_logprobs(half, targets)  # the bf16 logits, read in fp32 before the log-softmax
    want = half.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    assert got.dtype == torch.float32 and (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_gradient_matches_autograd(dtype):
    """The hand-written backward (onehot - softmax, made in place) against autograd through log_softmax + gather,
    with repeated targets in a row and a weight per position; the overwrite path gives the same values."""
    g = torch.Generator().manual_seed(1)
    base = (torch.randn(3, 6, 13, generator=g) * 3).to(dtype)
    targets = torch.randint(0, 4, (3, 6), generator=g)  # few distinct ids: rows repeat targets
    weight = torch.randn(3, 6, generator=g)
    a, b = base.clone().requires_grad_(), base.clone().requires_grad_()
    (token_logprobs(a, targets) * weight).sum().backward()
    (b.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1) * weight).sum().backward()
    assert a.grad.dtype == dtype
    assert torch.allclose(a.grad.float(), b.grad.float(), atol=1e-6 if dtype == torch.float32 else 1e-2)
    with torch.no_grad():
        logits = base.float()
        want = token_logprobs(logits, targets)
        assert torch.equal(token_logprobs(logits.clone(), targets, overwrite=True), want)
        assert torch.equal(logits, base.float())  # overwrite=False leaves the caller's logits alone


def test_token_logprobs_overwrite_under_autograd():
    """overwrite=True with autograd (the loss pass): the log-softmax is written over the logits (backward then
    reuses that memory too), and the values and gradients equal the copying path's; a graph that still needs the
    old logits (exp saves its result), or that uses the overwritten ones, is refused."""
    g = torch.Generator().manual_seed(2)
    base = torch.randn(3, 6, 13, generator=g) * 3
    targets = torch.randint(0, 13, (3, 6), generator=g)
    weight = torch.randn(3, 6, generator=g)
    grads = []
    for overwrite in (False, True):
        x = base.clone().requires_grad_()
        logits = x * 2.0  # a non-leaf, as the model's output is
        lp = token_logprobs(logits, targets, overwrite=overwrite)
        assert torch.equal(logits.detach(), (base * 2.0).log_softmax(-1) if overwrite else base * 2.0)
        (lp * weight).sum().backward()
        grads.append((lp.detach(), x.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    x = base.clone().requires_grad_()
    logits = x.exp()  # exp's backward needs its output, which the overwrite would change
    with pytest.raises(RuntimeError, match="inplace"):
        token_logprobs(logits, targets, overwrite=True).sum().backward()
    logits = x * 2.0
    lp = token_logprobs(logits, targets, overwrite=True)
    with pytest.raises(RuntimeError, match="overwrite=True"):  # the logits, now the log-softmax, used again
        (lp.sum() + logits.sum()).backward()


def test_token_logprobs_refuses_a_second_backward():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    out = token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long)).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        out.backward()


# -----------------------------------------------------------------------------
# batching


def test_build_batch_right_pads_and_masks_completion_targets():
    tokens, mask = build_batch([[5, 6], [7]], [[8, 9, 10], [11]])
    assert tokens.tolist() == [[5, 6, 8, 9, 10], [7, 11, 0, 0, 0]]
    # mask[b, t] = 1 where the target tokens[b, t+1] is a completion token
    assert mask.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]


# -----------------------------------------------------------------------------
# grpo_step on a tiny Transformer


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # tiny models run fastest on one thread, and do not stall when the cores are shared
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(seed=0, vocab_size=256):
    from model import ModelConfig, Transformer
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                      max_seq_len=128, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True, attn_bias=False)
    return Transformer(cfg)


PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]  # N = 3 distinct prompts of different lengths


def low_token_reward(prompt_ids, completion_ids):  # fraction of completion tokens below 16: ~1/16 at init
    return sum(t < 16 for t in completion_ids) / max(1, len(completion_ids))


def test_completion_logprobs_matches_one_row_at_a_time():
    model = tiny_model().eval()
    prompts, comps = [[1, 2, 3], [4], [5, 6]], [[7, 8], [9, 10, 11, 12], [13]]
    tokens, mask = build_batch(prompts, comps)
    logp = completion_logprobs(model, tokens, mask, micro_batch_size=2)  # (B, T-1)
    for b, (p, c) in enumerate(zip(prompts, comps)):
        row = torch.tensor([p + c])
        want = token_logprobs(model(row)[:, :-1], row[:, 1:])[0, len(p) - 1:]  # (|o|,)
        assert torch.allclose(logp[b][mask[b].bool()], want, atol=1e-5)
        assert (logp[b][~mask[b].bool()] == 0).all()
    # convention 10: at temperature 2 the log-probs are those of softmax(logits / 2), the sampling distribution
    hot = completion_logprobs(model, tokens, mask, micro_batch_size=3, temperature=2.0)  # (B, T-1)
    want = token_logprobs(model(tokens[:, :-1]) / 2, tokens[:, 1:]) * mask  # (B, T-1)
    assert torch.allclose(hot, want, atol=1e-5) and not torch.allclose(hot, logp, atol=1e-2)


@pytest.mark.parametrize("agg", ["seq-mean", "token-mean", "dr-grpo"])
def test_micro_batched_update_equals_full_batch(agg):
    # ragged rows (micro-batch widths 8, 4, 3); mu = 2 with a ref model: old log-probs, ratios != 1 in the second
    # iteration, the KL: every code path of the update
    g = torch.Generator().manual_seed(0)
    prompts = [PROMPTS[i % 3] for i in range(7)]
    comps = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (6, 1, 3, 2, 2, 1, 1)]
    adv = torch.randn(7, generator=g)
    cfg = GRPOConfig(max_new_tokens=6, beta=0.04, num_iterations=2, agg=agg, max_grad_norm=0.0)
    ref = tiny_model(seed=1).eval().requires_grad_(False)
    results = []
    for mb in (7, 3):  # 7 completions in one forward, or micro-batches of 3, 3, 1
        policy = tiny_model(seed=0)
        opt = torch.optim.SGD(policy.parameters(), lr=0.5)
        cfg.micro_batch_size = mb
        stats = grpo_update(policy, ref, opt, prompts, comps, adv, cfg)
        results.append((stats, torch.cat([p.detach().flatten() for p in policy.parameters()])))
    (full, w_full), (micro, w_micro) = results
    for k in ("loss", "kl", "ratio_mean", "entropy", "grad_norm"):
        assert micro[k] == pytest.approx(full[k], rel=1e-4, abs=1e-6), k
    assert torch.allclose(w_micro, w_full, atol=1e-6)
    assert full["ratio_mean"] != 1.0 and full["kl"] > 0  # the second iteration moved off-policy


def test_update_equals_the_loss_on_every_position():
    # grpo_update projects only the completion columns to logits, in micro-batches, and at mu = 1 takes pi_old as
    # the policy itself (no old-logprob pass): its loss and gradient must equal grpo_loss on a full forward
    g = torch.Generator().manual_seed(0)
    prompts = [PROMPTS[i % 3] for i in range(5)]
    comps = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (4, 1, 3, 2, 4)]
    adv = torch.randn(5, generator=g)
    cfg = GRPOConfig(max_new_tokens=4, beta=0.04, max_grad_norm=0.0, micro_batch_size=2)
    ref = tiny_model(seed=1).eval().requires_grad_(False)
    policy = tiny_model(seed=0)
    plain = copy.deepcopy(policy)
    stats = grpo_update(policy, ref, torch.optim.SGD(policy.parameters(), lr=0.0), prompts, comps, adv, cfg)
    tokens, mask = build_batch(prompts, comps)  # (B, T), (B, T-1)
    logp = token_logprobs(plain(tokens[:, :-1]), tokens[:, 1:])  # (B, T-1), every position
    with torch.no_grad():
        ref_logp = token_logprobs(ref(tokens[:, :-1]), tokens[:, 1:])  # (B, T-1)
    loss, _ = grpo_loss(logp, logp.detach(), ref_logp, adv, mask, beta=0.04)
    loss.backward()
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
    for p, q in zip(policy.parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)


def test_grpo_step_stats_and_samples():
    policy = tiny_model()
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    cfg = GRPOConfig(group_size=4, max_new_tokens=5)
    stats = grpo_step(policy, ref, opt, PROMPTS, low_token_reward, cfg, generator=torch.Generator().manual_seed(0))
    samples = stats.pop("_samples")
    assert all(isinstance(v, float) for v in stats.values()), stats
    for k in ("loss", "reward_mean", "reward_std", "kl", "clip_frac", "clip_frac_low", "clip_frac_high", "ratio_mean",
              "entropy", "grad_norm", "completion_len", "truncated_frac", "zero_std_frac", "rollout_s", "update_s"):
        assert k in stats and math.isfinite(stats[k]), k
    assert len(samples) == 3 * 4 and samples[4]["prompt_ids"] == PROMPTS[1]
    assert stats["kl"] == 0.0 and stats["ratio_mean"] == 1.0  # policy == ref, mu = 1: on-policy, no KL yet
    assert stats["completion_len"] == 5 and stats["truncated_frac"] == 1.0  # no eos_id: every completion is cut
    assert stats["reward_mean"] == pytest.approx(sum(s["reward"] for s in samples) / 12)
    assert abs(stats["entropy"] - math.log(256)) < 0.5  # sampled estimate; near uniform at init


class Boom(torch.nn.Module):
    def forward(self, tokens):
        raise AssertionError("the reference model must not run")


@pytest.mark.parametrize("beta,ref", [(0.0, Boom()), (0.04, None)])
def test_no_reference_forward_without_kl(beta, ref):
    policy = tiny_model()
    cfg = GRPOConfig(group_size=2, max_new_tokens=3, beta=beta)
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    stats = grpo_step(policy, ref, opt, PROMPTS, low_token_reward, cfg, generator=torch.Generator().manual_seed(0))
    assert stats["kl"] == 0.0


def test_reward_tuple_skip_zero_std_groups_and_mask_truncated():
    policy = tiny_model()
    before = [p.detach().clone() for p in policy.parameters()]
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)

    def reward_fn(prompt_ids, completion_ids):  # (shaped reward, raw accuracy): prompt 0's accuracy is flat
        acc = 0.0 if prompt_ids == PROMPTS[0] else float(completion_ids[0] % 2)
        return acc + 0.1 * (completion_ids[-1] % 3), acc

    g = torch.Generator().manual_seed(0)
    cfg = GRPOConfig(group_size=4, max_new_tokens=4, beta=0.0, skip_zero_std_groups=True)
    stats = grpo_step(policy, None, opt, PROMPTS, reward_fn, cfg, generator=g)
    acc = torch.tensor([s["accuracy"] for s in stats["_samples"]]).view(3, 4)
    rewards = torch.tensor([s["reward"] for s in stats["_samples"]]).view(3, 4)
    flat = (acc == acc[:, :1]).all(-1)  # (N,), judged on the accuracy, not on the shaped reward
    assert flat[0] and not flat.all() and rewards[0].std() > 0
    assert stats["zero_std_frac"] == pytest.approx(flat.float().mean().item())
    assert stats["kept_frac"] == pytest.approx(1 - flat.float().mean().item())

    # no eos_id: every completion is truncated, so mask_truncated leaves nothing: no optimizer step
    policy = tiny_model()
    cfg = GRPOConfig(group_size=4, max_new_tokens=4, beta=0.0, mask_truncated=True)
    stats = grpo_step(policy, None, torch.optim.SGD(policy.parameters(), lr=0.1), PROMPTS, reward_fn, cfg, generator=g)
    assert stats["kept_frac"] == 0.0 and stats["truncated_frac"] == 1.0
    assert stats["loss"] == 0.0 and math.isnan(stats["kl"]) and math.isnan(stats["entropy"])  # not measured
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


@pytest.mark.parametrize("field,value", [
    ("group_size", 1), ("max_new_tokens", 0), ("temperature", 0.0), ("top_p", 0.0), ("top_p", 1.5), ("beta", -0.1),
    ("beta", math.inf),
    ("clip_eps", -0.5), ("clip_eps_high", -0.1), ("num_iterations", 0), ("agg", "seqmean"), ("ref_update_every", -1),
    ("micro_batch_size", 0), ("rollout_prompts", -1), ("max_grad_norm", -1.0)])
def test_config_check_names_the_bad_setting(field, value):
    GRPOConfig().check()  # the defaults are fine
    with pytest.raises(ValueError, match=rf"\[grpo\]\.{field} = "):
        GRPOConfig(**{field: value}).check()
    with pytest.raises(ValueError, match=field):  # grpo_step checks before it samples anything
        grpo_step(tiny_model(), None, None, PROMPTS, lambda p, c: 0.0, GRPOConfig(**{field: value}))


def test_maybe_update_ref():
    policy, ref = tiny_model(seed=0), tiny_model(seed=1)
    cfg = GRPOConfig(ref_update_every=3)
    same = lambda: all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), policy.state_dict().values()))
    assert not maybe_update_ref(ref, policy, 2, cfg) and not same()
    assert maybe_update_ref(ref, policy, 3, cfg) and same()
    assert not maybe_update_ref(ref, policy, 3, GRPOConfig(ref_update_every=0))


def test_grpo_learns_toy_task():
    # reward: the fraction of completion tokens below 16 (1/16 under a uniform policy); GRPO should lift it
    policy = tiny_model()
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.0)
    cfg = GRPOConfig(group_size=8, max_new_tokens=8, beta=0.04)
    g = torch.Generator().manual_seed(0)
    curve = [grpo_step(policy, ref, opt, PROMPTS, low_token_reward, cfg, generator=g)["reward_mean"]
             for _ in range(30)]
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert first < 0.2 and last > 0.6, curve  # 4 seeds: 0.07-0.11 -> 0.83-1.0


def test_rollout_chunks_each_sample_with_their_own_generator():
    """A list of generators: one generate call per chunk of prompts, so a chunk's samples do not depend on the
    other chunks (how train.py shards a step's rollout over ranks)."""
    from grpo import rollout
    policy, cfg = tiny_model(), GRPOConfig(group_size=3, max_new_tokens=5)
    prompts = PROMPTS + [[10, 11]]  # 4 prompts -> 2 chunks of 2
    gens = lambda: [torch.Generator().manual_seed(s) for s in (7, 8)]
    both = rollout(policy, prompts, low_token_reward, cfg, generator=gens())
    first = rollout(policy, prompts[:2], low_token_reward, cfg, generator=gens()[0])
    second = rollout(policy, prompts[2:], low_token_reward, cfg, generator=gens()[1])
    assert both["completion_ids"] == first["completion_ids"] + second["completion_ids"]
    assert both["prompt_ids"][6:] == [p for p in prompts[2:] for _ in range(3)]
    assert torch.equal(both["rewards"], torch.cat([first["rewards"], second["rewards"]]))
    one_call = rollout(policy, prompts, low_token_reward, cfg, generator=gens()[0])
    assert one_call["completion_ids"][:6] != both["completion_ids"][:6] or \
        one_call["completion_ids"][6:] != both["completion_ids"][6:]  # one generator over all rows: another stream


def test_rollout_ends_at_any_stop_id():
    """eos_id=[a, b]: a completion that ends in either id ended (not truncated), even at exactly max_new_tokens;
    one that ends in neither is truncated."""
    stub = StubPolicy([[5, 6, 7, 1], [5, 6, 2], [5, 6, 7, 2], [5, 1, 7, 8]])
    roll = rollout(stub, [[3]], lambda p, c: 0.0, GRPOConfig(group_size=4, max_new_tokens=4), eos_id=[1, 2])
    assert roll["truncated"].tolist() == [False, False, False, True]


# -----------------------------------------------------------------------------
# statistics and switches that a wrong line would change without breaking the loss tests above (review M)


def test_seq_mean_counts_a_row_without_tokens_in_B():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    loss, _ = grpo_loss(logp, None, None, torch.tensor([1.0, 1.0]), torch.tensor([[1.0, 1.0], [0.0, 0.0]]), beta=0.0)
    assert loss.item() == pytest.approx(-0.5)  # row 0: -(1 + 1) / 2 = -1; row 1: 0 (not nan); mean over B = 2


def test_clip_fractions_count_only_tokens_the_clip_acts_on():
    old = torch.zeros(2, 1)
    logp = torch.tensor([[math.log(1.5)], [math.log(0.5)]])  # ratios 1.5 and 0.5, both outside [0.8, 1.2]
    _, st = grpo_loss(logp, old, None, torch.zeros(2), torch.ones(2, 1), clip_eps=0.2)
    assert st["clip_frac_high"] == 0.0 and st["clip_frac_low"] == 0.0  # A = 0: min() has nothing to clip
    logp = torch.tensor([[math.log(0.75)]])  # exactly at the lower bound 1 - 0.25: not clipped
    _, st = grpo_loss(logp, torch.zeros(1, 1), None, torch.tensor([-1.0]), torch.ones(1, 1), clip_eps=0.25)
    assert st["clip_frac_low"] == 0.0


def _update(mu, lr=0.0, **kw):
    g = torch.Generator().manual_seed(0)
    prompts = [PROMPTS[i % 3] for i in range(5)]
    comps = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (4, 1, 3, 2, 4)]
    adv = torch.randn(5, generator=g)
    cfg = GRPOConfig(max_new_tokens=4, beta=0.04, max_grad_norm=0.0, micro_batch_size=2, num_iterations=mu, **kw)
    ref = tiny_model(seed=1).eval().requires_grad_(False)
    policy = tiny_model(seed=0)
    return grpo_update(policy, ref, torch.optim.SGD(policy.parameters(), lr=lr), prompts, comps, adv, cfg), policy


def test_update_statistics_are_means_over_the_iterations(monkeypatch):
    one, _ = _update(1)
    two, _ = _update(2)  # lr 0: both iterations see the same policy, so each mean equals the one-iteration value
    for k in ("loss", "kl", "entropy", "grad_norm", "ratio_mean"):
        assert two[k] == pytest.approx(one[k], rel=1e-5), k
    # lr > 0: the second iteration sees a moved policy, and the logged norm is the mean of the two
    norms, clip = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: norms.append(clip(*a, **k)) or norms[-1])
    base, _ = _update(2, lr=0.5)
    assert len(norms) == 2 and norms[0] != norms[1] and base["grad_norm"] == pytest.approx(sum(norms).item() / 2)
    # each loss statistic of the second iteration's 3 micro-batches raised by 1 (its weights sum to 1): the logged
    # means move by 1/2, where the first iteration alone would move them by 0 and the last alone by 1
    calls, real = [], grpo_module.grpo_loss

    def raised(*a, **k):
        loss, st = real(*a, **k)
        calls.append(sorted(st))
        return loss, {key: v + 1.0 if len(calls) > 3 else v for key, v in st.items()}

    monkeypatch.setattr(grpo_module, "grpo_loss", raised)
    moved, _ = _update(2, lr=0.5)
    assert len(calls) == 6 and set(calls[0]) == set(UPDATE_KEYS) - {"entropy", "grad_norm"}
    for k in calls[0]:
        assert moved[k] - base[k] == pytest.approx(0.5), k


def test_clip_eps_high_zero_means_the_symmetric_clip():
    a, pa = _update(2, lr=0.5)  # the second iteration's ratios leave [0.8, 1.2]: the upper bound acts
    b, pb = _update(2, lr=0.5, clip_eps_high=0.2)
    assert a["clip_frac_high"] > 0 and a["clip_frac_high"] == b["clip_frac_high"] and a["loss"] == b["loss"]
    assert all(torch.equal(p, q) for p, q in zip(pa.parameters(), pb.parameters()))


def test_update_passes_clip_eps_high_to_the_loss():
    a, _ = _update(2, lr=0.5)  # the upper bound 1.2 acts in the second iteration
    b, _ = _update(2, lr=0.5, clip_eps_high=10.0)  # the upper bound 11 never does
    assert a["clip_frac_high"] > 0 and b["clip_frac_high"] == 0.0
    assert b["clip_frac_low"] == a["clip_frac_low"]  # the lower bound is clip_eps in both


def test_reward_std_is_the_population_std():
    policy = tiny_model()
    cfg = GRPOConfig(group_size=4, max_new_tokens=5, beta=0.0)
    st = grpo_step(policy, None, torch.optim.SGD(policy.parameters(), lr=0.0), PROMPTS, low_token_reward, cfg,
                   generator=torch.Generator().manual_seed(0))
    r = torch.tensor([s["reward"] for s in st["_samples"]])
    assert r.std() > 0 and st["reward_std"] == pytest.approx(r.std(unbiased=False).item())
