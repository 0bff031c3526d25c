"""distill.py against hand-computed values and a hand-written loop reference (CPU, fp64, well under a second)."""
import math

import pytest
import torch

from distill import DistillConfig, distill_loss, distill_objective, distill_stats, filter_traces, masked_ce

KINDS = ["forward_kl", "reverse_kl", "jsd"]


def kl(a, b):
    """KL(a || b) = sum_v a log(a / b) over the support of a (0 log 0 = 0), straight from the definition."""
    on = a > 0
    return (a[on] * (a[on] / b[on]).log()).sum()


def reference(s, t, mask, T=1.0, kind="forward_kl", beta=0.5, top_k=0):
    """An explicit loop over tokens with torch.softmax and sums: the conventions of distill.py written naively."""
    B, L, V = s.shape
    total, n = 0.0, 0
    for b in range(B):
        for i in range(L):
            if mask[b, i] == 0:
                continue
            q = torch.softmax(s[b, i] / T, -1)  # student (V,)
            p = torch.softmax(t[b, i].detach() / T, -1)  # teacher (V,)
            if top_k:  # teacher cut to its top k and renormalized; the student only for reverse KL
                keep = torch.zeros(V, dtype=torch.bool)
                keep[t[b, i].topk(top_k).indices] = True
                p = torch.where(keep, p, 0) / p[keep].sum()
                if kind == "reverse_kl":
                    q = torch.where(keep, q, 0) / q[keep].sum()
            if kind == "forward_kl":
                d = kl(p, q)
            elif kind == "reverse_kl":
                d = kl(q, p)
            else:
                m = beta * p + (1 - beta) * q
                d = beta * kl(p, m) + (1 - beta) * kl(q, m)
            total, n = total + d, n + 1
    return T ** 2 * total / max(n, 1)


def make(B=2, L=3, V=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, L, V, generator=g, dtype=torch.float64) * scale).requires_grad_()
    t = torch.randn(B, L, V, generator=g, dtype=torch.float64) * scale
    mask = torch.tensor([[1., 1, 0], [0, 1, 1]])  # (B, L), two masked positions
    return s, t, mask


def grad_of(fn, s):
    s = s.detach().clone().requires_grad_()
    loss = fn(s)
    loss.backward()
    return loss.detach(), s.grad


# -----------------------------------------------------------------------------
# distill_loss: values and gradients


def test_hand_computed_single_token():
    s = torch.tensor([[[math.log(3.0), 0.0]]])  # q = (0.75, 0.25)
    t = torch.zeros(1, 1, 2)  # p = (0.5, 0.5)
    m = torch.ones(1, 1)
    fwd = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p || q) = 0.5 ln(4/3)
    rev = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(q || p)
    assert distill_loss(s, t, m).item() == pytest.approx(fwd, rel=1e-6)
    assert distill_loss(s, t, m, kind="reverse_kl").item() == pytest.approx(rev, rel=1e-6)
    assert fwd != pytest.approx(rev, rel=1e-2)  # the example tells the directions apart


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_matches_reference_values_and_grads(kind, T):
    s, t, mask = make()
    beta = 0.3  # not 0.5, so swapping p and q inside jsd would show
    loss, g = grad_of(lambda x: distill_loss(x, t, mask, temperature=T, kind=kind, beta=beta), s)
    ref, g_ref = grad_of(lambda x: reference(x, t, mask, T=T, kind=kind, beta=beta), s)
    assert loss.item() > 0.05
    assert torch.allclose(loss, ref, rtol=1e-10)
    assert torch.allclose(g, g_ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_forward_kl_grad_closed_form(T):
    # d/ds T^2 * mean_masked KL(p || softmax(s/T)) = T^2 * (q - p) / T / n = T * (q - p) / n on masked tokens
    s, t, mask = make()
    _, g = grad_of(lambda x: distill_loss(x, t, mask, temperature=T), s)
    q, p = torch.softmax(s.detach() / T, -1), torch.softmax(t / T, -1)  # (B, L, V)
    expected = T * (q - p) * mask.unsqueeze(-1) / mask.sum()
    assert torch.allclose(g, expected, rtol=1e-10, atol=1e-14)


def test_T_squared_scaling():
    s, t, mask = make()
    for kind in KINDS:  # loss at T is T^2 times the loss of the logits divided by T, at T = 1
        assert torch.allclose(distill_loss(s, t, mask, 2.0, kind), 4 * distill_loss(s / 2, t / 2, mask, 1.0, kind))
    # Hinton section 2.1: at high T the forward-KL gradient tends to (s - t) / (V n) for zero-mean logits, free of T
    s0 = (s - s.mean(-1, keepdim=True)).detach()
    t0 = t - t.mean(-1, keepdim=True)
    _, g = grad_of(lambda x: distill_loss(x, t0, mask, temperature=1000.0), s0)
    expected = (s0 - t0) * mask.unsqueeze(-1) / (5 * mask.sum())
    assert torch.allclose(g, expected, atol=1e-2 * expected.abs().max())  # error O(|logits| / T)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_for_identical_logits(kind):
    s, _, mask = make()
    for T in (1.0, 2.0):
        assert distill_loss(s, s.detach().clone(), mask, T, kind).abs().item() < 1e-12
    x = torch.randn(4, 8, 256) * 5  # fp32, a larger vocabulary
    assert distill_loss(x, x.clone(), torch.ones(4, 8), 1.0, kind).abs().item() < 1e-5


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("top_k", [0, 2])
def test_no_gradient_into_teacher(kind, top_k):
    s, t, mask = make()
    t.requires_grad_()
    distill_loss(s, t, mask, 2.0, kind, top_k=top_k).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_ignored(kind):
    s, t, mask = make()
    loss, g = grad_of(lambda x: distill_loss(x, t, mask, 2.0, kind), s)
    s2, t2 = s.detach().clone(), t.clone()
    junk = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 10
    off = mask == 0  # (B, L)
    s2[off], t2[off] = junk[off], -junk[off]
    loss2, g2 = grad_of(lambda x: distill_loss(x, t2, mask, 2.0, kind), s2)
    assert torch.allclose(loss, loss2, rtol=1e-12)
    assert torch.allclose(g, g2, rtol=1e-12) and (g2[off] == 0).all()
    assert distill_loss(s, t, torch.zeros(2, 3), 2.0, kind).item() == 0.0  # nothing visible: 0, not nan


# -----------------------------------------------------------------------------
# jsd limits, top-k, dtype


def test_jsd_limits_and_symmetry():
    s, t, mask = make()
    fwd = distill_loss(s, t, mask, 2.0, "forward_kl")
    rev = distill_loss(s, t, mask, 2.0, "reverse_kl")
    eps = 1e-6  # JSD / beta -> KL(teacher || student) as beta -> 0, JSD / (1 - beta) -> KL(student || teacher) as -> 1
    assert torch.allclose(distill_loss(s, t, mask, 2.0, "jsd", beta=eps) / eps, fwd, rtol=1e-4)
    assert torch.allclose(distill_loss(s, t, mask, 2.0, "jsd", beta=1 - eps) / eps, rev, rtol=1e-4)
    assert not torch.allclose(fwd, rev, rtol=1e-2)  # so the two limits above are really different checks
    half = distill_loss(s, t, mask, 2.0, "jsd", beta=0.5)
    assert torch.allclose(half, distill_loss(t, s, mask, 2.0, "jsd", beta=0.5))  # symmetric at beta = 0.5
    assert 0 < half < 4 * math.log(2)  # JSD <= ln 2 per token, times T^2 = 4
    # beta and 1 - beta swap roles with teacher and student
    assert torch.allclose(distill_loss(s, t, mask, 1.0, "jsd", beta=0.2), distill_loss(t, s, mask, 1.0, "jsd", beta=0.8))
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError):
            distill_loss(s, t, mask, kind="jsd", beta=bad)


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_matches_reference(kind):
    s, t, mask = make()
    loss, g = grad_of(lambda x: distill_loss(x, t, mask, 2.0, kind, beta=0.3, top_k=2), s)
    ref, g_ref = grad_of(lambda x: reference(x, t, mask, T=2.0, kind=kind, beta=0.3, top_k=2), s)
    assert torch.allclose(loss, ref, rtol=1e-10)
    assert torch.allclose(g, g_ref, rtol=1e-8, atol=1e-12)
    if kind == "forward_kl":  # the student is not renormalized: mass outside the teacher's top 2 gets pushed down
        full = distill_loss(s, t, mask, 2.0, kind)
        assert not torch.allclose(loss, full, rtol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_full_vocab_equals_full(kind):
    s, t, mask = make()
    loss, g = grad_of(lambda x: distill_loss(x, t, mask, 2.0, kind, top_k=5), s)
    full, g_full = grad_of(lambda x: distill_loss(x, t, mask, 2.0, kind), s)
    assert torch.allclose(loss, full, rtol=1e-10) and torch.allclose(g, g_full, rtol=1e-8, atol=1e-14)


def test_low_precision_inputs_compute_in_fp32():
    s, t, mask = make()
    sb, tb = s.detach().bfloat16(), t.bfloat16()
    loss = distill_loss(sb, tb, mask, 2.0)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, distill_loss(sb.float(), tb.float(), mask, 2.0))
    big = torch.tensor([[[80.0, -80.0, 0.0]]], dtype=torch.bfloat16)  # softmax underflows to 0: no log(0), no nan
    assert torch.isfinite(distill_loss(big, -big, torch.ones(1, 1), kind="reverse_kl"))


# -----------------------------------------------------------------------------
# stats and the mixed objective


def test_distill_stats_hand_computed():
    V = 4
    s = torch.zeros(1, 4, V)  # uniform student: CE = ln 4 on every token
    t = torch.zeros(1, 4, V)
    s[0, :, 0] = 1e-3  # student argmax 0 everywhere (its CE moves by ~1e-4 only)
    t[0, torch.arange(4), torch.tensor([0, 0, 1, 2])] = 5.0  # teacher argmax 0, 0, 1, 2
    targets = torch.tensor([[0, 0, 1, 2]])
    mask = torch.tensor([[1., 0, 1, 1]])  # visible: agree, disagree, disagree
    st = distill_stats(s, t, targets, mask)
    assert st["agree"] == pytest.approx(1 / 3)
    assert st["ce"] == pytest.approx(math.log(4), abs=1e-3)
    assert st["teacher_ce"] == pytest.approx(math.log(3 + math.exp(5)) - 5, rel=1e-5)
    assert all(isinstance(v, float) for v in st.values())


def test_objective_mixes_distill_and_ce():
    s, t, mask = make()
    targets = torch.tensor([[0, 1, 2], [3, 4, 0]])
    d = distill_loss(s, t, mask, 2.0).item()
    ce = -torch.log_softmax(s.detach(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L), at T = 1
    ce = ((ce * mask).sum() / mask.sum()).item()
    assert masked_ce(s, targets, mask).item() == pytest.approx(ce, rel=1e-10)
    for w in (0.0, 0.25, 1.0):
        loss, st = distill_objective(s, t, targets, mask, DistillConfig(temperature=2.0, ce_weight=w))
        assert loss.item() == pytest.approx((1 - w) * d + w * ce, rel=1e-10)
        assert st["distill"] == pytest.approx(d) and st["ce"] == pytest.approx(ce) and st["loss"] == loss.item()


# -----------------------------------------------------------------------------
# rejection sampling


def test_filter_traces_keeps_exactly_the_reward_one_samples():
    samples = [{"prompt_ids": [1], "completion_ids": [10 + i], "i": i} for i in range(6)]
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.999, 1.0])
    kept, rate = filter_traces(samples, rewards, dedup=False)
    assert [x["i"] for x in kept] == [0, 2, 5] and rate == pytest.approx(0.5)
    kept, rate = filter_traces(samples, rewards.tolist(), threshold=0.5)  # a lower bar, python floats
    assert [x["i"] for x in kept] == [0, 2, 3, 4, 5] and rate == pytest.approx(5 / 6)
    assert filter_traces([], []) == ([], 0.0)
    kept, rate = filter_traces(samples[:2], [float("nan"), 1.0])  # nan never passes
    assert [x["i"] for x in kept] == [1] and rate == 0.5


def test_filter_traces_dedup_per_prompt():
    samples = [{"prompt_ids": [1, 2], "completion_ids": [7, 8]},
               {"prompt_ids": [1, 2], "completion_ids": [7, 8]},  # a repeat: dropped with dedup
               {"prompt_ids": [3], "completion_ids": [7, 8]},  # same completion, another prompt: kept
               {"prompt_ids": [1, 2], "completion_ids": [7, 9]}]
    kept, rate = filter_traces(samples, [1, 1, 1, 1])
    assert kept == [samples[0], samples[2], samples[3]] and rate == 1.0
    kept, _ = filter_traces(samples, [1, 1, 1, 1], dedup=False)
    assert kept == samples


def test_distill_config_defaults_are_the_documented_ones():
    """D17-D19: the defaults R1's recipe relies on: T = 1, keep only correct traces (reward >= 1), dedup on."""
    c = DistillConfig()
    assert (c.temperature, c.reward_threshold, c.dedup_traces, c.kind) == (1.0, 1.0, True, "forward_kl")


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_distill_config_refuses_jsd_beta_at_the_ends(beta):
    """D20: jsd_beta 0 or 1 is refused by check() (before any model loads), not at the first loss."""
    with pytest.raises(ValueError, match="jsd_beta"):
        DistillConfig(kind="jsd", jsd_beta=beta).check()


def test_objective_forwards_kind_jsd_beta_and_top_k():
    """distill_objective (train.py's logits-mode loss) uses cfg.kind, cfg.jsd_beta and cfg.top_k. One token,
    student q = (0.75, 0.25), teacher p = (0.5, 0.5)."""
    s = torch.tensor([[[math.log(3.0), 0.0]]])
    t = torch.zeros(1, 1, 2)
    y, m = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1)
    rev = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(q || p)
    loss, st = distill_objective(s, t, y, m, DistillConfig(kind="reverse_kl"))
    assert loss.item() == pytest.approx(rev, rel=1e-6) and st["distill"] == pytest.approx(rev, rel=1e-6)
    mix = (0.3 * 0.5 + 0.7 * 0.75, 0.3 * 0.5 + 0.7 * 0.25)  # m = beta p + (1 - beta) q = (0.675, 0.325)
    jsd = 0.3 * (0.5 * math.log(0.5 / mix[0]) + 0.5 * math.log(0.5 / mix[1])) + \
        0.7 * (0.75 * math.log(0.75 / mix[0]) + 0.25 * math.log(0.25 / mix[1]))
    loss, _ = distill_objective(s, t, y, m, DistillConfig(kind="jsd", jsd_beta=0.3))
    assert loss.item() == pytest.approx(jsd, rel=1e-6)
    # top_k = 1: the teacher is one-hot on its argmax (token 0), so forward KL is -log q(0) = -ln 0.6
    s3, t3 = torch.tensor([[[math.log(3.0), 0.0, 0.0]]]), torch.tensor([[[1.0, 0.0, 0.0]]])
    loss, _ = distill_objective(s3, t3, y, m, DistillConfig(top_k=1))
    assert loss.item() == pytest.approx(-math.log(0.6), rel=1e-6)


def test_ce_and_stats_of_a_batch_without_visible_tokens_are_zero_not_nan():
    """masked_ce (the CE term and the ce/teacher_ce stats) divides by the clamped token count, like
    distill_loss: no visible token gives 0, not nan."""
    logits, y, m = torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)
    assert masked_ce(logits, y, m).item() == 0.0
    assert distill_stats(logits, logits, y, m) == {"agree": 0.0, "ce": 0.0, "teacher_ce": 0.0}


def test_distill_config_boundaries():
    """The documented ends are accepted (ce_weight 1 = pure CE, sample_temperature 0 = greedy); an infinite
    T and zero samples per prompt are refused by name."""
    DistillConfig(ce_weight=1.0, sample_temperature=0.0).check()
    DistillConfig(reward_threshold=-1.0).check()  # every trace accepted
    for field, value in (("temperature", math.inf), ("samples_per_prompt", 0), ("reward_threshold", math.nan),
                         ("reward_threshold", 1.5)):  # above 1 no trace could pass: refused before any sampling
        with pytest.raises(ValueError, match=rf"\[distill\]\.{field} = "):
            DistillConfig(**{field: value}).check()


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_refuses_beta_at_the_ends_by_name(beta):
    """The refusal names the rule (not a bare 'math domain error' from log(0))."""
    s = torch.zeros(1, 1, 2)
    with pytest.raises(ValueError, match=r"jsd needs 0 < beta < 1"):
        distill_loss(s, s, torch.ones(1, 1), kind="jsd", beta=beta)


def test_agree_compares_with_the_teacher_argmax_not_the_targets():
    """agree is student argmax == teacher argmax, whatever the targets: here the targets differ from both."""
    s, t = torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)
    s[0, :, 1] = 1.0  # student argmax 1 everywhere
    t[0, torch.arange(3), torch.tensor([1, 1, 2])] = 1.0  # teacher argmax 1, 1, 2
    targets = torch.tensor([[3, 3, 3]])  # neither model's argmax
    st = distill_stats(s, t, targets, torch.ones(1, 3))
    assert st["agree"] == pytest.approx(2 / 3)


def test_masked_ce_of_low_precision_logits_computes_in_fp32():
    """Convention 5 for the CE term too: bf16 logits give an fp32 loss equal to the fp32 computation."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 50, generator=g) * 3).bfloat16()
    y, m = torch.randint(0, 50, (2, 3), generator=g), torch.tensor([[1., 1, 0], [1, 1, 1]])
    ce = masked_ce(logits, y, m)
    assert ce.dtype == torch.float32
    assert ce.item() == pytest.approx(masked_ce(logits.float(), y, m).item(), rel=1e-6)


def test_filter_traces_refuses_samples_and_rewards_of_different_lengths():
    """One reward per sample: a short reward list is a bug upstream, not a silent cut of the samples."""
    samples = [{"prompt_ids": [1], "completion_ids": [i]} for i in range(3)]
    with pytest.raises(AssertionError, match="3 samples but 2 rewards"):
        filter_traces(samples, [1.0, 1.0])


def test_distill_config_refuses_out_of_range_values_by_name():
    """ce_weight above 1 (a negative distill weight), a zero teacher budget and an infinite reward threshold."""
    for field, value in (("ce_weight", 1.5), ("max_new_tokens", 0), ("reward_threshold", -math.inf)):
        with pytest.raises(ValueError, match=rf"\[distill\]\.{field} = "):
            DistillConfig(**{field: value}).check()
