"""grpo_update, grpo_step and rollout wiring: every log-prob tempered, the gradient clipped, the Dr. GRPO switches
reaching the math, the right samples filtered with their own advantages, rollout chunks covering every prompt; the
loss's edges (exact clip bounds, masked positions holding anything, a batch without tokens) and the config's ends."""
import copy
import math

import pytest
import torch

import grpo
from grpo import GRPOConfig, build_batch, grpo_loss, grpo_step, grpo_update, rollout, token_logprobs
from model import ModelConfig, Transformer
from test_decode import spread_weights


def _grpo_tiny(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                                   max_seq_len=128))


PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]


def _batch(n=5, lens=(4, 1, 3, 2, 4)):
    g = torch.Generator().manual_seed(0)
    prompts = [PROMPTS[i % 3] for i in range(n)]
    comps = [torch.randint(0, 256, (k,), generator=g).tolist() for k in lens]
    return prompts, comps, torch.randn(n, generator=g)


def test_update_log_probs_are_all_tempered():
    """G13-G15 (convention 10): at temperature 2 the policy, pi_old and pi_ref log-probs are all those of
    softmax(logits / 2). mu = 2 at lr 0: pi_old == pi_theta, so the ratio is exactly 1 and loss and KL equal
    grpo_loss on full tempered forwards."""
    prompts, comps, adv = _batch()
    cfg = GRPOConfig(max_new_tokens=4, beta=0.04, max_grad_norm=0.0, micro_batch_size=2, num_iterations=2,
                     temperature=2.0)
    ref, policy = _grpo_tiny(1).eval().requires_grad_(False), _grpo_tiny(0)
    plain = copy.deepcopy(policy)
    st = grpo_update(policy, ref, torch.optim.SGD(policy.parameters(), lr=0.0), prompts, comps, adv, cfg)
    tokens, mask = build_batch(prompts, comps)
    logp = token_logprobs(plain(tokens[:, :-1]) / 2, tokens[:, 1:])
    with torch.no_grad():
        ref_logp = token_logprobs(ref(tokens[:, :-1]) / 2, tokens[:, 1:])
    loss, want = grpo_loss(logp, logp.detach(), ref_logp, adv, mask, beta=0.04)
    assert st["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert st["kl"] == pytest.approx(want["kl"], rel=1e-4) and st["loss"] == pytest.approx(loss.item(), rel=1e-4)


def test_update_clips_the_gradient_norm():
    """G16: max_grad_norm clips the global gradient norm before the step: with SGD at lr 1 the parameters move by
    exactly max_grad_norm (the gradient is much larger), and grad_norm reports the norm before clipping."""
    prompts, comps, adv = _batch()
    policy = _grpo_tiny(0)
    before = torch.cat([p.detach().flatten() for p in policy.parameters()])
    cfg = GRPOConfig(max_new_tokens=4, beta=0.0, max_grad_norm=1e-3, micro_batch_size=2)
    st = grpo_update(policy, None, torch.optim.SGD(policy.parameters(), lr=1.0), prompts, comps, adv, cfg)
    after = torch.cat([p.detach().flatten() for p in policy.parameters()])
    assert st["grad_norm"] > 1e-2
    assert (after - before).norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_dr_grpo_divides_by_max_new_tokens_not_the_batch_width():
    """G19: agg='dr-grpo' uses the constant max_new_tokens (10 here), not the longest completion in the batch (4)."""
    prompts, comps, adv = _batch()
    cfg = GRPOConfig(max_new_tokens=10, beta=0.0, max_grad_norm=0.0, micro_batch_size=5, agg="dr-grpo")
    policy = _grpo_tiny(0)
    plain = copy.deepcopy(policy)
    st = grpo_update(policy, None, torch.optim.SGD(policy.parameters(), lr=0.0), prompts, comps, adv, cfg)
    tokens, mask = build_batch(prompts, comps)
    logp = token_logprobs(plain(tokens[:, :-1]), tokens[:, 1:])
    loss, _ = grpo_loss(logp, None, None, adv, mask, beta=0.0, agg="dr-grpo", max_len=10)
    assert st["loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_grpo_step_without_reward_scaling_uses_r_minus_mean():
    """G18: scale_rewards=False (Dr. GRPO): each sample's advantage is its reward minus its group's mean."""
    policy = _grpo_tiny(0)
    cfg = GRPOConfig(group_size=4, max_new_tokens=4, beta=0.0, scale_rewards=False)
    st = grpo_step(policy, None, torch.optim.SGD(policy.parameters(), lr=0.0), PROMPTS,
                   lambda p, c: float(c[0] % 3), cfg, generator=torch.Generator().manual_seed(0))
    r = torch.tensor([s["reward"] for s in st["_samples"]]).view(3, 4)
    adv = torch.tensor([s["advantage"] for s in st["_samples"]]).view(3, 4)
    assert r.std(-1).max() > 0
    assert torch.allclose(adv, r - r.mean(-1, keepdim=True), atol=1e-6)


def test_skip_zero_std_groups_drops_the_flat_groups_own_samples(monkeypatch):
    """G29: the samples left out are those of the all-equal-accuracy group (prompt 0), G of them, not an interleaved
    pick: the update sees each other group's prompt four times and prompt 0 never."""
    seen = {}

    def update(policy, ref, opt, prompt_ids, completion_ids, adv, cfg, reduce=None):
        seen["prompts"] = prompt_ids
        return dict.fromkeys(grpo.UPDATE_KEYS, 0.0)
    monkeypatch.setattr(grpo, "grpo_update", update)

    def reward_fn(p, c):
        acc = 0.0 if p == PROMPTS[0] else float(c[0] % 2)
        return acc, acc
    cfg = GRPOConfig(group_size=4, max_new_tokens=4, beta=0.0, skip_zero_std_groups=True)
    st = grpo.grpo_step(_grpo_tiny(0), None, None, PROMPTS, reward_fn, cfg, generator=torch.Generator().manual_seed(0))
    acc = torch.tensor([s["accuracy"] for s in st["_samples"]]).view(3, 4)
    flat = (acc == acc[:, :1]).all(-1).tolist()
    assert flat[0] and not all(flat)
    want = [tuple(q) for q, f in zip(PROMPTS, flat) if not f for _ in range(4)]
    assert sorted(map(tuple, seen["prompts"])) == sorted(want)


def test_a_float_reward_is_its_own_accuracy():
    """G08: reward_fn returning a float: accuracy == reward (it then decides skip_zero_std_groups)."""
    roll = rollout(_grpo_tiny(0), PROMPTS, lambda p, c: float(c[0] % 2), GRPOConfig(group_size=4, max_new_tokens=3),
                   generator=torch.Generator().manual_seed(0))
    assert roll["rewards"].sum() > 0 and torch.equal(roll["accuracy"], roll["rewards"])


def test_rollout_chunks_of_unequal_size_cover_every_prompt():
    """G07: 3 prompts over 2 generators: chunks of 2 and 1 prompts (ceil), every prompt sampled G times."""
    cfg = GRPOConfig(group_size=2, max_new_tokens=3)
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    roll = rollout(_grpo_tiny(0), PROMPTS, lambda p, c: 0.0, cfg, generator=gens)
    assert len(roll["completion_ids"]) == 6 and len(roll["rewards"]) == 6
    alone = rollout(_grpo_tiny(0), PROMPTS[2:], lambda p, c: 0.0, cfg, generator=torch.Generator().manual_seed(8))
    assert roll["completion_ids"][4:] == alone["completion_ids"]


def test_rollout_with_more_generators_than_prompts_leaves_the_last_chunk_empty():
    """3 prompts over 4 generators: ceil gives one prompt per chunk, and the fourth chunk is empty (not sampled)."""
    cfg = GRPOConfig(group_size=2, max_new_tokens=3)
    gens = [torch.Generator().manual_seed(s) for s in (7, 8, 9, 10)]
    roll = rollout(_grpo_tiny(0), PROMPTS, lambda p, c: 0.0, cfg, generator=gens)
    assert len(roll["completion_ids"]) == 6 and roll["prompt_ids"][4] == PROMPTS[2]
    alone = rollout(_grpo_tiny(0), PROMPTS[2:], lambda p, c: 0.0, cfg, generator=torch.Generator().manual_seed(9))
    assert roll["completion_ids"][4:] == alone["completion_ids"]


def test_token_logprobs_overwrite_keeps_fp32_for_bf16_logits():
    """G34: target_logprobs always passes overwrite=True; with bf16 logits (autocast) the log-softmax must still be
    fp32 (a fresh tensor), not written back into the bf16 logits."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 50, generator=g) * 3).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 50, (2, 3), generator=g)
    want = torch.log_softmax(logits.detach().float(), -1).gather(-1, targets[..., None])[..., 0]
    got = token_logprobs(logits * 1, targets, overwrite=True)
    assert got.dtype == torch.float32 and (got - want).abs().max().item() < 1e-5


def test_clip_frac_high_not_counted_at_exactly_the_upper_bound():
    """Ratio exactly 1 + eps (1.25 is exact in fp32) with A > 0: min() picks either term, the clip does not
    bind, so clip_frac_high is 0 (the low side already has this check)."""
    logp = torch.tensor([[math.log(1.25)]])
    _, st = grpo_loss(logp, torch.zeros(1, 1), None, torch.tensor([1.0]), torch.ones(1, 1), clip_eps=0.25)
    assert st["clip_frac_high"] == 0.0 and st["clip_frac"] == 0.0
    _, st = grpo_loss(logp, torch.zeros(1, 1), None, torch.tensor([1.0]), torch.ones(1, 1), clip_eps=0.2)
    assert st["clip_frac_high"] == 1.0  # just above 1.2: counted


class StubPolicy:
    """A policy whose generate returns fixed completions, whatever the prompts (the first len(prompts) of them)."""
    training = False

    def __init__(self, completions):
        self.completions = completions

    def eval(self):
        pass

    def train(self, mode=True):
        pass

    def generate(self, prompts, **kw):
        return self.completions[: len(prompts)]


FOUR = [[0], [0], [1], [3]]  # with reward c[0] and G = 2: rewards (0, 0) for the first prompt, (1, 3) for the second


def test_skip_zero_std_groups_passes_the_kept_samples_own_advantages(monkeypatch):
    """The flat group (prompt [1]) leaves the loss; the update gets the advantages of the kept samples, those
    of group (1, 3): mean 2, population std 1 -> (-1, 1) / (1 + 1e-4), not the first two advantages (0, 0)."""
    seen = {}

    def update(policy, ref, opt, prompt_ids, completion_ids, adv, cfg, reduce=None):
        seen.update(prompts=prompt_ids, comps=completion_ids, adv=adv.tolist())
        return dict.fromkeys(grpo.UPDATE_KEYS, 0.0)
    monkeypatch.setattr(grpo, "grpo_update", update)
    cfg = GRPOConfig(group_size=2, max_new_tokens=4, beta=0.0, skip_zero_std_groups=True)
    st = grpo.grpo_step(StubPolicy(FOUR), None, None, [[1], [2]], lambda p, c: float(c[0]), cfg)
    assert seen["prompts"] == [[2], [2]] and seen["comps"] == [[1], [3]]
    assert seen["adv"] == pytest.approx([-1 / (1 + 1e-4), 1 / (1 + 1e-4)], rel=1e-6)
    assert st["kept_frac"] == 0.5 and st["zero_std_frac"] == 0.5


def test_config_boundaries():
    """clip_eps = 0 (a clip range of one point) and an infinite temperature are refused by name;
    max_grad_norm = 0 is the documented 'no clipping' and is accepted (as are the other documented zeros)."""
    for field, value in (("clip_eps", 0.0), ("temperature", math.inf)):
        with pytest.raises(ValueError, match=rf"\[grpo\]\.{field} = "):
            GRPOConfig(**{field: value}).check()
    GRPOConfig(max_grad_norm=0.0, clip_eps_high=0.0, beta=0.0, ref_update_every=0, rollout_prompts=0).check()


def test_masked_old_and_ref_logprobs_may_hold_anything():
    """grpo_loss sets old_logp and ref_logp equal to logp at masked positions too: an old log-prob of -1000
    (exp(logp - old) = inf) or a nan reference there must not reach the loss or the gradient."""
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    old = torch.tensor([[-1.1, -2.0], [-0.5, -1000.0]])
    ref = torch.tensor([[-1.2, -1.9], [-0.4, float("nan")]])
    for o, r in ((old, None), (None, ref), (old, ref)):
        loss, st = grpo_loss(logp, o, r, adv, mask, beta=0.1)
        loss.backward()
        assert torch.isfinite(loss) and math.isfinite(st["kl"]) and math.isfinite(st["ratio_mean"])
        assert torch.isfinite(logp.grad).all() and logp.grad[1, 1] == 0
        logp.grad = None
    # hand value, old only, beta 0: row 0 ratios e^0.1, 1 (A = 1), row 1 ratio 1 (A = -1); seq-mean
    loss, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0)
    assert loss.item() == pytest.approx((-(min(math.exp(0.1), 1.2) + 1) / 2 + 1) / 2, rel=1e-6)


def test_token_mean_of_a_batch_without_tokens_is_zero_not_nan():
    """token-mean divides by the clamped token count (seq-mean has the same check): an all-masked batch gives
    0, not nan."""
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, _ = grpo_loss(logp, None, None, torch.tensor([1.0, -1.0]), torch.zeros(2, 3), beta=0.0, agg="token-mean")
    assert loss.item() == 0.0


def test_maybe_update_ref_without_a_reference_model():
    """beta = 0 leaves train.py with ref None; ref_update_every > 0 must then do nothing, not crash."""
    assert grpo.maybe_update_ref(None, torch.nn.Linear(1, 1), 3, GRPOConfig(ref_update_every=3)) is False


def test_truncated_frac_counts_only_completions_cut_without_a_stop(monkeypatch):
    """max_new_tokens 1, stop id 0: completions [0], [0] ended, [1], [3] were cut: truncated_frac 0.5."""
    cfg = GRPOConfig(group_size=2, max_new_tokens=1, beta=0.0, mask_truncated=True)
    seen = {}

    def update(policy, ref, opt, prompt_ids, completion_ids, adv, cfg, reduce=None):
        seen["comps"] = completion_ids
        return dict.fromkeys(grpo.UPDATE_KEYS, 0.0)
    monkeypatch.setattr(grpo, "grpo_update", update)
    st = grpo.grpo_step(StubPolicy(FOUR), None, None, [[1], [2]], lambda p, c: float(c[0]), cfg, eos_id=0)
    assert st["truncated_frac"] == 0.5 and st["kept_frac"] == 0.5 and seen["comps"] == [[0], [0]]
    assert [s["truncated"] for s in st["_samples"]] == [False, False, True, True]


def test_rollout_samples_with_the_configs_temperature_top_p_and_stop_ids():
    """rollout hands cfg.temperature, cfg.top_p and eos_id to generate: a tiny top_p, or a tiny temperature, makes
    each of the G samples the greedy completion; a stop id ends every completion at its first occurrence, and such
    a completion is not truncated."""
    policy = spread_weights(_grpo_tiny(0))  # logits far apart: a tiny temperature or top_p is greedy
    greedy = policy.generate(PROMPTS, max_new_tokens=6, temperature=0)  # (3,) completions of 6 tokens
    assert len({tuple(c) for c in greedy}) == 3
    for kw in (dict(temperature=1.0, top_p=1e-6), dict(temperature=1e-4, top_p=1.0)):
        cfg = GRPOConfig(group_size=3, max_new_tokens=6, **kw)
        roll = rollout(policy, PROMPTS, lambda p, c: 0.0, cfg, generator=torch.Generator().manual_seed(0))
        assert roll["completion_ids"] == [c for c in greedy for _ in range(3)], kw
    eos = next(t for t in greedy[0][1:5] if t not in greedy[0][:1])  # ends prompt 0's completion early
    cut = [c[: c.index(eos) + 1] if eos in c else c for c in greedy]
    cfg = GRPOConfig(group_size=3, max_new_tokens=6, top_p=1e-6)
    roll = rollout(policy, PROMPTS, lambda p, c: 0.0, cfg, eos_id=eos, generator=torch.Generator().manual_seed(0))
    assert roll["completion_ids"] == [c for c in cut for _ in range(3)] and len(cut[0]) < 6
    assert roll["truncated"].tolist() == [len(c) == 6 and c[-1] != eos for c in cut for _ in range(3)]


def test_update_passes_clip_eps_to_the_loss():
    """grpo_update clips with cfg.clip_eps (mu = 2, lr 0.5: the second iteration's ratios leave [0.8, 1.2]): the wider
    range [0.5, 1.5] clips fewer tokens on both sides (clip_eps_high 0 follows clip_eps), and the loss differs."""
    prompts, comps, adv = _batch()
    stats = []
    for clip_eps in (0.2, 0.5):
        cfg = GRPOConfig(max_new_tokens=4, beta=0.0, max_grad_norm=0.0, micro_batch_size=2, num_iterations=2,
                         clip_eps=clip_eps)
        policy = _grpo_tiny(0)
        stats.append(grpo_update(policy, None, torch.optim.SGD(policy.parameters(), lr=0.5), prompts, comps, adv, cfg))
    a, b = stats
    assert a["clip_frac_low"] > b["clip_frac_low"] > 0 and a["clip_frac_high"] > b["clip_frac_high"] > 0
    assert a["loss"] != b["loss"]
    assert a["ratio_mean"] == pytest.approx(b["ratio_mean"], rel=1e-6)  # the same policies: only the clip differs


def test_clip_frac_is_the_sum_of_its_low_and_high_parts():
    """stats['clip_frac'] counts the tokens clipped on either side: ratio 1.5 with A > 0 (high), 0.5 with A < 0
    (low), 1.0 (neither), clip range [0.8, 1.2]."""
    logp = torch.tensor([[math.log(1.5)], [math.log(0.5)], [0.0]])
    _, st = grpo_loss(logp, torch.zeros(3, 1), None, torch.tensor([1.0, -1.0, 1.0]), torch.ones(3, 1), clip_eps=0.2)
    assert st["clip_frac_high"] == pytest.approx(1 / 3) and st["clip_frac_low"] == pytest.approx(1 / 3)
    assert st["clip_frac"] == pytest.approx(2 / 3)


def test_on_policy_update_runs_no_old_logprob_pass(monkeypatch):
    """mu = 1 is on-policy (ratio 1 by construction): the update runs the reference's no-grad pass only, never a
    pass of the policy for pi_old (a wasted forward over the whole batch); mu = 2 runs both."""
    calls, real = [], grpo.completion_logprobs
    monkeypatch.setattr(grpo, "completion_logprobs", lambda model, *a, **k: calls.append(model) or real(model, *a, **k))
    prompts, comps, adv = _batch()
    ref, policy = _grpo_tiny(1).eval().requires_grad_(False), _grpo_tiny(0)
    for mu, want in ((1, [ref]), (2, [ref, policy])):
        calls.clear()
        cfg = GRPOConfig(max_new_tokens=4, beta=0.04, micro_batch_size=2, num_iterations=mu)
        grpo_update(policy, ref, torch.optim.SGD(policy.parameters(), lr=0.0), prompts, comps, adv, cfg)
        assert len(calls) == len(want) and all(c is w for c, w in zip(calls, want)), mu


def test_a_step_whose_filters_leave_nothing_logs_zero_loss_and_grad_norm():
    """mask_truncated with every completion cut (no stop id): no update runs; loss and grad_norm are logged as 0
    (as documented), the statistics of the update that did not run as nan."""
    cfg = GRPOConfig(group_size=2, max_new_tokens=1, beta=0.0, mask_truncated=True)
    st = grpo.grpo_step(StubPolicy(FOUR), None, None, [[1], [2]], lambda p, c: float(c[0]), cfg)
    assert st["kept_frac"] == 0.0 and st["truncated_frac"] == 1.0
    assert st["loss"] == 0.0 and st["grad_norm"] == 0.0
    assert all(math.isnan(st[k]) for k in grpo.UPDATE_KEYS if k not in ("loss", "grad_norm"))


@pytest.mark.parametrize("agg", ["seq-mean", "dr-grpo", "token-mean"])
def test_two_identical_ranks_take_the_one_process_step(agg):
    """Data parallel without processes: reduce = 2 * t is the sum over two ranks that hold the same prompts and
    generators, so their step must be the one process's: the loss's denominators count both ranks' sequences (B)
    and tokens, the gradient is summed over them, and every statistic equals the one-process value (reward_std
    from the two-pass global variance, zero_std_frac over groups). Prompt 0's accuracy is flat (so some groups are
    and some are not) and the shaped reward is not the accuracy, so a mixed-up count or mean shows."""
    def reward_fn(p, c):
        acc = 0.0 if p == PROMPTS[0] else float(c[0] % 2)
        return acc + 0.1 * (c[-1] % 3), acc

    runs = []
    for reduce in (None, lambda t: 2 * t):
        policy = _grpo_tiny(0)
        ref = copy.deepcopy(policy).eval().requires_grad_(False)
        cfg = GRPOConfig(group_size=4, max_new_tokens=4, beta=0.04, agg=agg, max_grad_norm=0.0, micro_batch_size=5)
        st = grpo_step(policy, ref, torch.optim.SGD(policy.parameters(), lr=0.5), PROMPTS, reward_fn, cfg,
                       generator=torch.Generator().manual_seed(0), reduce=reduce)
        for k in ("_samples", "rollout_s", "update_s"):
            st.pop(k)
        runs.append((st, torch.cat([p.detach().flatten() for p in policy.parameters()])))
    (one, w_one), (two, w_two) = runs
    assert 0 < one["zero_std_frac"] < 1 and one["reward_mean"] != one["accuracy_mean"]
    assert one.keys() == two.keys()
    for k in one:
        assert two[k] == pytest.approx(one[k], rel=1e-5, abs=1e-7), k
    assert torch.allclose(w_two, w_one, atol=1e-6)
