"""Group Relative Policy Optimization (GRPO), written out by hand.

Papers: DeepSeekMath (Shao et al., 2024, arXiv 2402.03300), which introduced GRPO; DeepSeek-R1 (arXiv
2501.12948), which used it with rule-based rewards; DAPO (arXiv 2503.14476) and Dr. GRPO (Liu et al., 2025,
"Understanding R1-Zero-Like Training", arXiv 2503.20783) for the switches below.

The objective, DeepSeekMath Eq. 3 (maximized; we minimize its negative), for a question q and G outputs
o_1..o_G sampled from pi_old:
    J = 1/G sum_i 1/|o_i| sum_t [ min(rho_it A_it, clip(rho_it, 1-eps, 1+eps) A_it) - beta D_it ]
    rho_it = pi_theta(o_it | q, o_i,<t) / pi_old(o_it | q, o_i,<t)
    D_it   = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1     (Eq. 4, Schulman's k3: >= 0, unbiased under pi_theta)
    A_it   = (r_i - mean(r)) / std(r) for every token t of o_i  (outcome supervision, section 4.1.2)
The KL is a term of the loss, not folded into the reward, so the advantage stays free of it.
Iterative GRPO (section 4.1.4): every `ref_update_every` steps the reference is reset to the policy.

Conventions and departures (2-9 are switches in GRPOConfig, whose defaults are DeepSeekMath's plus 8; 1 and 10
are fixed):
 1. std is the population std (unbiased=False) plus eps=1e-4; a group whose rewards are all equal gets A = 0
    exactly (the paper leaves std = 0 undefined; TRL uses the sample std).
 2. agg="token-mean" (DAPO): sum over all tokens of the batch / number of tokens, not a per-sequence mean.
 3. agg="dr-grpo" (Dr. GRPO): sum over all tokens / (B * max_new_tokens), no 1/|o_i| length bias (B counts the
    completions in the loss: constant unless the filters of 6 and 7 drop some).
 4. scale_rewards=False (Dr. GRPO): A_i = r_i - mean(r), no division by the group std.
 5. clip_eps_high (DAPO clip-higher): the clip range is [1 - clip_eps, 1 + clip_eps_high].
 6. mask_truncated (DAPO overlong filtering): completions that hit max_new_tokens without eos leave the loss,
    and B (TRL instead keeps them in B with an all-zero mask, so its seq-mean and dr-grpo losses are smaller);
    their rewards still count in their group's baseline.
 7. skip_zero_std_groups (DAPO dynamic sampling, without re-sampling): groups whose raw accuracies are all
    equal leave the loss. Where the reward is the accuracy and beta = 0, their A = 0 gives no gradient anyway
    and they only dilute the mean; with a format reward (train.py) such a group can still have A != 0 from the
    format term, and that signal is dropped too.
 8. max_grad_norm: we clip the gradient's global L2 norm before each optimizer step (not in the paper).
 9. num_iterations (mu) > 1: each iteration is one optimizer step on the whole rollout batch.
10. log-probs (ratio, KL) are those of the sampling distribution softmax(logits / temperature), as in TRL and
    verl; at the default temperature 1 that is the model itself. top_p < 1 is not applied to them: the ratio
    and the KL see the whole tempered distribution, not the nucleus the tokens were drawn from.

Data parallel (train.py under torchrun): each rank calls grpo_step on its own prompts with `reduce`, a function
that sums a tensor over the ranks. The loss denominators (sequences, tokens), the gradients and the logged
statistics then cover every rank's samples, so W ranks take the optimizer step one process would take on the union
of their rollouts. This file never asks which rank it is on.
"""
import math
import time
from dataclasses import dataclass

import torch

from config import check_rules
from model import stop_ids

# -----------------------------------------------------------------------------
# config


AGGS = ("seq-mean", "token-mean", "dr-grpo")  # grpo_loss's aggregations


@dataclass
class GRPOConfig:
    group_size: int = 8  # G, outputs sampled per prompt (DeepSeekMath: 64)
    max_new_tokens: int = 64  # completion budget in tokens; also the constant of agg="dr-grpo"
    temperature: float = 1.0  # rollout sampling temperature
    top_p: float = 1.0  # rollout nucleus sampling; 1.0 = off
    beta: float = 0.04  # KL weight, DeepSeekMath Eq. 3; 0 skips the reference model entirely
    clip_eps: float = 0.2  # eps of the clipped ratio, DeepSeekMath Eq. 3 (the paper gives no value; 0.2 is PPO's)
    clip_eps_high: float = 0.0  # DAPO clip-higher: upper clip 1 + this (DAPO uses 0.28); 0 = same as clip_eps
    num_iterations: int = 1  # mu, optimizer steps per rollout; 1 = on-policy (ratio == 1, no old-logp pass)
    agg: str = "seq-mean"  # loss aggregation: "seq-mean" (DeepSeekMath), "token-mean" (DAPO), "dr-grpo"
    scale_rewards: bool = True  # divide advantages by the group std; False = Dr. GRPO
    ref_update_every: int = 0  # iterative GRPO: reset the reference to the policy every N GRPO steps; 0 = never
    mask_truncated: bool = False  # DAPO: completions cut at max_new_tokens (no eos) leave the loss
    skip_zero_std_groups: bool = False  # DAPO: groups with all-equal accuracy leave the loss
    micro_batch_size: int = 16  # sequences per forward/backward (16: cache-friendly logits on CPU); exact accumulation
    rollout_prompts: int = 0  # prompts per generate call (its KV cache holds prompts x G rows); 0 = batch / ranks
    max_grad_norm: float = 1.0  # clip the global gradient L2 norm before the optimizer step; 0 = no clipping

    def check(self):
        """Raise a ValueError naming the first setting that GRPO cannot run with (or would silently not learn
        from); grpo_step calls it, train.py calls it before loading anything."""
        rules = [
            ("group_size", self.group_size >= 2, "at least 2: a group of one has advantage 0, so nothing is learned"),
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
            ("temperature", 0 < self.temperature < math.inf,
             "finite and > 0: greedy rollouts make every group's samples equal, infinite ones are uniform noise"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("beta", 0 <= self.beta < math.inf, "finite, >= 0"),
            ("clip_eps", self.clip_eps > 0, "> 0"),
            ("clip_eps_high", self.clip_eps_high >= 0, ">= 0 (0: the same as clip_eps)"),
            ("num_iterations", self.num_iterations >= 1, "at least 1"),
            ("agg", self.agg in AGGS, f"one of {AGGS}"),
            ("ref_update_every", self.ref_update_every >= 0, ">= 0 (0: never)"),
            ("micro_batch_size", self.micro_batch_size >= 1, "at least 1"),
            ("rollout_prompts", self.rollout_prompts >= 0, ">= 0 (0: batch_size / ranks)"),
            ("max_grad_norm", self.max_grad_norm >= 0, ">= 0 (0: no clipping)"),
        ]
        check_rules("grpo", self, rules)


# -----------------------------------------------------------------------------
# the math: tensors in, tensors out


def group_advantages(rewards, group_size, eps=1e-4, scale=True):
    """Outcome-supervision advantages, DeepSeekMath section 4.1.2. rewards (N*G,) with the G samples of
    each prompt contiguous -> advantages (N*G,). Population std; a zero-variance group gives exactly 0."""
    r = rewards.float().view(-1, group_size)  # (N, G)
    adv = r - r.mean(-1, keepdim=True)  # (N, G)
    if scale:
        adv = adv / (r.std(-1, keepdim=True, unbiased=False) + eps)  # (N, G)
    # all-equal rewards: no learning signal; we make it exactly 0 (the mean can be off by an ulp)
    flat = (r == r[:, :1]).all(-1, keepdim=True)  # (N, 1)
    return adv.masked_fill(flat, 0.0).view(-1)  # (N*G,)


def kl_k3(logp, ref_logp):
    """Per-token k3 estimate of KL(pi_theta || pi_ref), DeepSeekMath Eq. 4: u - log u - 1, u = pi_ref/pi_theta.
    Always >= 0, zero iff logp == ref_logp; its gradient wrt logp is 1 - u."""
    log_u = ref_logp - logp  # log(pi_ref / pi_theta)
    return log_u.exp() - log_u - 1


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps=0.2, beta=0.04, agg="seq-mean",
              clip_eps_high=None, max_len=None):
    """The negative GRPO objective (DeepSeekMath Eq. 3) for one batch of sampled tokens.
    logp (B, T) fp32 log pi_theta of the sampled tokens (with grad); old_logp (B, T) under pi_old, or None for
    on-policy (ratio == 1 exactly, gradient that of logp); ref_logp (B, T) under pi_ref, or None (no KL);
    advantages (B,); mask (B, T) in {0, 1}. clip_eps_high defaults to clip_eps; max_len is the constant of
    agg="dr-grpo" (defaults to T). Returns (loss, stats), stats a flat dict of floats, token-averaged."""
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    # the masked positions (prompt, padding) may hold any log-prob: set them equal, so that exp() stays finite
    # there (a NaN times a zero mask is still NaN, in the loss and in its gradient)
    off = mask == 0
    logp = logp.masked_fill(off, 0.0)
    old_logp = None if old_logp is None else old_logp.masked_fill(off, 0.0)
    ref_logp = None if ref_logp is None else ref_logp.masked_fill(off, 0.0)
    mask = mask.float()
    if old_logp is None:
        old_logp = logp.detach()  # on-policy: pi_old == pi_theta, ratio 1, gradient A * grad logp
    ratio = torch.exp(logp - old_logp)  # (B, T), rho_it
    A = advantages.float().unsqueeze(-1)  # (B, 1), the same for every token of o_i
    surr = ratio * A  # (B, T)
    surr_clipped = torch.clamp(ratio, 1 - clip_eps, 1 + eps_high) * A  # (B, T)
    per_token = -torch.min(surr, surr_clipped)  # (B, T), minus: we minimize
    use_kl = beta != 0 and ref_logp is not None
    if use_kl:
        kl = kl_k3(logp, ref_logp)  # (B, T), Eq. 4
        per_token = per_token + beta * kl

    B, T = mask.shape
    if agg == "seq-mean":  # DeepSeekMath: mean over each o_i's tokens, then over the sequences
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif agg == "token-mean":  # DAPO: every token of the batch weighs the same
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    elif agg == "dr-grpo":  # Dr. GRPO: a constant denominator, no length normalization
        loss = (per_token * mask).sum() / (B * (max_len or T))
    else:
        raise ValueError(f"unknown agg {agg!r}; valid: {AGGS}")

    with torch.no_grad():  # the clip is active (zero gradient) where min() picks the clipped term
        n = mask.sum().clamp(min=1)
        low = ((ratio < 1 - clip_eps) & (A < 0)).float()  # (B, T)
        high = ((ratio > 1 + eps_high) & (A > 0)).float()  # (B, T)
        stats = {
            "loss": loss.item(),
            "kl": ((kl * mask).sum() / n).item() if use_kl else 0.0,
            "ratio_mean": ((ratio * mask).sum() / n).item(),
            "clip_frac_low": ((low * mask).sum() / n).item(),
            "clip_frac_high": ((high * mask).sum() / n).item(),
        }
    stats["clip_frac"] = stats["clip_frac_low"] + stats["clip_frac_high"]
    return loss, stats


def token_logprobs(logits, targets, overwrite=False):
    """log pi(targets): logits (B, T, V), targets (B, T) -> (B, T) fp32, from one fused log-softmax kernel (on CPU
    ~1.6x faster than logsumexp + gather). Its backward (GatheredLogSoftmax) makes no second (B, T, V) tensor.
    overwrite=True: the log-softmax is written over the fp32 logits, which the caller gives up (on CPU a fresh
    tensor of that size costs more in page faults than the kernel)."""
    overwrite = overwrite and logits.dtype == torch.float32
    if not (torch.is_grad_enabled() and logits.requires_grad):
        z = logits.float()
        return pick(torch.log_softmax(z, dim=-1, out=z if overwrite else None), targets)
    return GatheredLogSoftmax.apply(logits, targets, overwrite)[0]


def pick(logp_all, targets):
    """logp_all (B, T, V), targets (B, T) -> logp_all[b, t, targets[b, t]], (B, T)."""
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class GatheredLogSoftmax(torch.autograd.Function):
    """log_softmax(z)[targets] in fp32. The gradient, g * (onehot(targets) - softmax(z)), is made in place from the
    saved log-softmax: autograd's own backward (gather, then log_softmax) would allocate two more (B, T, V) tensors,
    and on CPU fresh memory of that size costs more in page faults than the arithmetic. A second backward through
    the same graph is refused by autograd (the saved tensor's version changed). overwrite: the log-softmax is
    written over the logits, which autograd then knows as this function's second output: a graph that still needs
    the old logits, or that uses the new ones, is refused in backward."""

    @staticmethod
    def forward(ctx, logits, targets, overwrite):
        ctx.set_materialize_grads(False)  # no zero (B, T, V) gradient for the unused second output
        logp_all = torch.log_softmax(logits.float(), dim=-1, out=logits if overwrite else None)  # (B, T, V)
        if overwrite:
            ctx.mark_dirty(logits)
        ctx.save_for_backward(logp_all, targets)
        ctx.logits_dtype = logits.dtype
        return pick(logp_all, targets), logp_all  # (B, T), (B, T, V)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, grad_all):
        if grad_all is not None:
            raise RuntimeError("token_logprobs: the log-softmax it wrote over the logits (overwrite=True) was used "
                               "afterwards; pass overwrite=False to keep the logits")
        logp_all, targets = ctx.saved_tensors
        g = grad.unsqueeze(-1)  # (B, T, 1)
        dz = logp_all.exp_().mul_(-g).scatter_add_(-1, targets.unsqueeze(-1), g)  # -g p, plus g at the target
        return dz.to(ctx.logits_dtype), None, None


# -----------------------------------------------------------------------------
# batching: ragged token lists -> padded tensors -> per-token log-probs


def build_batch(prompts, completions, pad_id=0, device=None):
    """Rows prompt + completion, right-padded: a causal model reads them without an attention mask (padding
    comes after every real token). Returns tokens (B, T) and mask (B, T-1), aligned with the targets
    tokens[:, 1:]: mask[b, t] = 1 where tokens[b, t+1] is a completion token (eos included)."""
    assert all(len(p) > 0 for p in prompts), "a prompt needs at least one token to predict from"
    T = max(len(p) + len(c) for p, c in zip(prompts, completions))
    tokens = torch.full((len(prompts), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(prompts), T - 1)  # (B, T-1)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        tokens[b, :len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        mask[b, len(p) - 1:len(p) - 1 + len(c)] = 1  # logits at position t predict token t+1
    return tokens.to(device), mask.to(device)


def micro_batches(mask, micro_batch_size):
    """Row slices of at most micro_batch_size, each with its rows' first target columns starts (b,) and the count
    L of target columns its longest completion needs: row b's targets are columns starts[b] .. starts[b] + L - 1.
    The model then computes no position of a row before its first target column (its last prompt token; the
    prompt before it is computed once per distinct prompt, model.py departure 6) and none after the longest
    completion ends."""
    first = mask.argmax(-1)  # (B,) per row, its first target column (0 for a row without any)
    width = (torch.arange(1, mask.shape[1] + 1, device=mask.device) * mask).amax(-1).long()  # (B,) last + 1
    for i in range(0, len(first), micro_batch_size):
        rows = slice(i, i + micro_batch_size)
        yield rows, first[rows], int((width[rows] - first[rows]).clamp(min=0).max())


def target_logprobs(model, tokens, starts, L, temperature=1.0):
    """log pi(tokens[b, c + 1]) at each row's target columns c = starts[b] .. starts[b] + L - 1, from one model
    call that computes those positions and, once per distinct prompt, the prompt before them (model.py, forward
    with per-row starts): tokens (b, T) -> (b, T - 1) fp32, the log-probs in their columns, 0 in the others (the
    mask's zeros must cover whatever lies there)."""
    b, T = tokens.shape
    cols = starts[:, None] + torch.arange(L, device=tokens.device)  # (b, L) each row's target columns
    padded = torch.nn.functional.pad(tokens, (0, L))  # a row that ends early reads padding
    logits = model(padded[:, : int(starts.max()) + L], start=starts)  # (b, L, V): position c predicts c + 1
    logp = token_logprobs(tempered(logits, temperature), padded.gather(1, cols + 1), overwrite=True)  # (b, L)
    return logp.new_zeros(b, T - 1 + L).scatter(1, cols, logp)[:, : T - 1]  # (b, T - 1), in columns


def completion_logprobs(model, tokens, mask, micro_batch_size, temperature=1.0):
    """log-probs of the targets tokens[:, 1:] under a frozen model (pi_ref, or pi_old), in micro-batches and
    without autograd: (B, T) -> (B, T-1) fp32, zero where the mask is 0."""
    logp = torch.zeros(mask.shape, device=mask.device)  # (B, T-1)
    with torch.inference_mode():
        for rows, starts, L in micro_batches(mask, micro_batch_size):
            logp[rows] = target_logprobs(model, tokens[rows], starts, L, temperature)
    return logp * mask  # logp was made outside inference mode, so autograd may use it later


def tempered(logits, temperature):
    """The sampling distribution's logits: rollouts come from softmax(z / temperature) (convention 10)."""
    return logits if temperature in (0.0, 1.0) else logits / temperature


# -----------------------------------------------------------------------------
# one GRPO step: rollout -> rewards -> advantages -> num_iterations optimizer updates


def rollout(policy, prompts, reward_fn, cfg, eos_id=None, generator=None):
    """Sample G completions per prompt from pi_old (the current policy, in eval mode) and score them.
    reward_fn(prompt_ids, completion_ids) returns a float, or a pair (shaped_reward, accuracy): the reward
    drives the advantages, the accuracy only decides skip_zero_std_groups (a float reward is its own accuracy).
    Returns a dict: prompt_ids, completion_ids (lists, G rows per prompt, contiguous), rewards, accuracy,
    truncated (tensors (N*G,)). A list of generators splits the prompts into that many equal chunks, one
    generate call each with its own generator (rollout chunks: the KV cache holds one chunk at a time)."""
    prompt_ids = [p for p in prompts for _ in range(cfg.group_size)]  # (N*G,) lists
    gens = generator if isinstance(generator, list) else [generator]
    rows = -(-len(prompts) // len(gens)) * cfg.group_size  # rows per generate call
    was_training = policy.training
    policy.eval()
    completion_ids = []
    for i, gen in enumerate(gens):
        chunk = prompt_ids[i * rows:(i + 1) * rows]  # the last chunks are short, or empty (5 prompts, 4 generators)
        if chunk:
            completion_ids += policy.generate(chunk, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                              top_p=cfg.top_p, eos_id=eos_id, generator=gen)
    policy.train(was_training)
    scores = [reward_fn(p, c) for p, c in zip(prompt_ids, completion_ids)]
    pairs = [s if isinstance(s, tuple) else (s, s) for s in scores]
    stops = set(stop_ids(eos_id))  # eos_id: None, an id or ids, as generate takes it
    ended = [len(c) > 0 and c[-1] in stops for c in completion_ids]
    return {
        "prompt_ids": prompt_ids,
        "completion_ids": completion_ids,
        "rewards": torch.tensor([float(r) for r, _ in pairs]),  # (N*G,)
        "accuracy": torch.tensor([float(a) for _, a in pairs]),  # (N*G,)
        "truncated": torch.tensor([len(c) >= cfg.max_new_tokens and not e for c, e in zip(completion_ids, ended)]),
    }


UPDATE_KEYS = ("loss", "kl", "ratio_mean", "clip_frac_low", "clip_frac_high", "clip_frac", "entropy", "grad_norm")


def grpo_update(policy, ref_model, optimizer, prompt_ids, completion_ids, advantages, cfg, reduce=None):
    """cfg.num_iterations optimizer steps on the GRPO loss of one rollout batch (already filtered).
    Gradient accumulation over micro-batches, each loss weighted so the sum equals the full-batch loss.
    reduce (data parallel): sums a tensor over the ranks; B and the token count are then global, the gradients
    are summed before clipping, and this rank's batch may be empty (it still takes the step)."""
    device = next(policy.parameters()).device
    # rows by prompt length (stable: a prompt's G rows stay together): micro-batches then hold prompts of like
    # length, so the prefixes the model computes once per prompt (model.py departure 6) need little padding
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    prompt_ids, completion_ids = [prompt_ids[i] for i in order], [completion_ids[i] for i in order]
    advantages = advantages[order]
    if prompt_ids:
        tokens, mask = build_batch(prompt_ids, completion_ids, device=device)  # (B, T), (B, T-1)
    else:  # data parallel: every sample of this rank was filtered out
        tokens, mask = torch.zeros(0, 2, dtype=torch.long, device=device), torch.zeros(0, 1, device=device)
    adv = advantages.to(device)  # (B,)
    B, mb = len(tokens), cfg.micro_batch_size
    # pi_ref and pi_old are fixed during the update: one no-grad pass each, or none at all
    temp = cfg.temperature
    ref_logp = completion_logprobs(ref_model, tokens, mask, mb, temp) if cfg.beta and ref_model is not None else None
    old_logp = completion_logprobs(policy, tokens, mask, mb, temp) if cfg.num_iterations > 1 else None  # else ratio 1
    n_tok = mask.sum()
    if reduce is not None:  # the denominators count every rank's sequences and tokens
        B, n_tok = reduce(torch.tensor([float(B), n_tok.item()], dtype=torch.float64)).tolist()
        n_tok = torch.tensor(n_tok, device=device)
    totals = dict.fromkeys(UPDATE_KEYS, 0.0)
    params = [p for p in policy.parameters() if p.requires_grad]
    for it in range(cfg.num_iterations):
        optimizer.zero_grad(set_to_none=True)
        for rows, starts, L in micro_batches(mask, mb):
            logp = target_logprobs(policy, tokens[rows], starts, L, temp)  # (b, T-1), fp32
            m = mask[rows]  # (b, T-1)
            loss, st = grpo_loss(logp, None if old_logp is None else old_logp[rows],
                                 None if ref_logp is None else ref_logp[rows], adv[rows], m,
                                 clip_eps=cfg.clip_eps, beta=cfg.beta, agg=cfg.agg,
                                 clip_eps_high=cfg.clip_eps_high or None, max_len=cfg.max_new_tokens)
            # seq-mean and dr-grpo average over sequences, token-mean over tokens: weight the micro-batch's share
            w_tok = (m.sum() / n_tok).item()  # this micro-batch's share of the tokens
            w = w_tok if cfg.agg == "token-mean" else len(logp) / B
            (loss * w).backward()
            totals["loss"] += w * st.pop("loss") / cfg.num_iterations
            for k, v in st.items():  # token-averaged stats
                totals[k] += w_tok * v / cfg.num_iterations
            if it == 0:  # entropy, sampled: E_{o~pi}[-log pi(o)] = H(pi) with the tokens from pi (top_p = 1)
                totals["entropy"] -= ((logp.detach() * m).sum() / n_tok).item()
        if reduce is not None:  # each rank's share is already weighted by the global counts: sum them
            sum_grads(params, reduce)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf  # inf: measure, do not clip
        totals["grad_norm"] += torch.nn.utils.clip_grad_norm_(params, max_norm).item() / cfg.num_iterations
        optimizer.step()
    if reduce is not None:  # the ranks' weighted shares of the loss and token statistics add up
        keys = [k for k in UPDATE_KEYS if k != "grad_norm"]  # the norm is already global
        totals.update(zip(keys, reduce(torch.tensor([totals[k] for k in keys], dtype=torch.float64)).tolist()))
    return totals


def sum_grads(params, reduce):
    """Replace each gradient by its sum over the ranks, in one collective (a rank without a gradient adds zeros)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = reduce(torch.cat([g.flatten() for g in grads]))  # (sum of numel,)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p)


def grpo_step(policy, ref_model, optimizer, prompts, reward_fn, cfg, eos_id=None, generator=None, reduce=None):
    """One GRPO step on the distinct prompts (list[list[int]]), each sampled cfg.group_size times:
    rollout + rewards, group advantages, then cfg.num_iterations optimizer steps (zero_grad, backward,
    grad clipping, optimizer.step all happen here; the caller sets the lr and counts steps).
    Returns a dict of Python floats: loss, kl (mean k3; 0 without a reference), ratio_mean, clip_frac(_low,
    _high), entropy (sampled: mean -log pi of the rollout tokens), grad_norm (before clipping) (when the filters
    leave no completion, no update runs: loss and grad_norm are 0, the other update statistics nan), reward_mean,
    reward_std (population, over all completions), accuracy_mean, completion_len, truncated_frac, zero_std_frac
    (groups with all-equal accuracy), kept_frac (completions in the loss), rollout_s (sampling + rewards),
    update_s; plus one non-float entry "_samples": per completion a dict of prompt_ids, completion_ids,
    reward, accuracy, advantage, truncated (pop it before logging metrics).
    reduce (data parallel, see the file docstring): the update and every statistic cover all ranks' samples;
    "_samples" holds this rank's."""
    cfg.check()
    t0 = time.perf_counter()
    roll = rollout(policy, prompts, reward_fn, cfg, eos_id=eos_id, generator=generator)
    t1 = time.perf_counter()
    rewards, acc, truncated = roll["rewards"], roll["accuracy"], roll["truncated"]  # (N*G,) each
    G = cfg.group_size
    adv = group_advantages(rewards, G, scale=cfg.scale_rewards)  # (N*G,)

    # which completions enter the loss (departures 6 and 7); all of them count in the baselines above
    acc_g = acc.view(-1, G)  # (N, G)
    zero_std = (acc_g == acc_g[:, :1]).all(-1)  # (N,)
    keep = torch.ones(len(rewards), dtype=torch.bool)  # (N*G,)
    if cfg.mask_truncated:
        keep &= ~truncated
    if cfg.skip_zero_std_groups:
        keep &= ~zero_std.repeat_interleave(G)
    idx = keep.nonzero().squeeze(1).tolist()
    n_kept = len(idx) if reduce is None else int(reduce(torch.tensor(float(len(idx)))).item())
    if n_kept:
        stats = grpo_update(policy, ref_model, optimizer, [roll["prompt_ids"][i] for i in idx],
                            [roll["completion_ids"][i] for i in idx], adv[idx], cfg, reduce)
    else:  # nothing to learn from: no optimizer step, and the update's statistics were not measured (nan)
        stats = {**dict.fromkeys(UPDATE_KEYS, math.nan), "loss": 0.0, "grad_norm": 0.0}
    t2 = time.perf_counter()

    lens = torch.tensor([len(c) for c in roll["completion_ids"]], dtype=torch.float32)  # (N*G,)
    if reduce is None:
        stats.update({
            "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std(unbiased=False).item(),
            "accuracy_mean": acc.mean().item(),
            "completion_len": lens.mean().item(),
            "truncated_frac": truncated.float().mean().item(),
            "zero_std_frac": zero_std.float().mean().item(),
            "kept_frac": keep.float().mean().item(),
        })
    else:  # the same means over every rank's completions (and groups): sums and counts, then two-pass std
        cols = torch.stack([rewards.float(), acc.float(), lens, truncated.float(), keep.float()])  # (5, N*G)
        sums = reduce(torch.cat([cols.double().sum(-1), torch.tensor([len(rewards), zero_std.sum(), len(zero_std)],
                                                                     dtype=torch.float64)]))
        n = sums[5]
        mean = sums[:5] / n
        var = reduce(((rewards.double() - mean[0]) ** 2).sum()) / n
        stats.update({"reward_mean": mean[0].item(), "reward_std": var.sqrt().item(), "accuracy_mean": mean[1].item(),
                      "completion_len": mean[2].item(), "truncated_frac": mean[3].item(),
                      "zero_std_frac": (sums[6] / sums[7]).item(), "kept_frac": mean[4].item()})
    stats.update({"rollout_s": t1 - t0, "update_s": t2 - t1})
    stats["_samples"] = [
        {"prompt_ids": p, "completion_ids": c, "reward": r, "accuracy": a, "advantage": v, "truncated": t}
        for p, c, r, a, v, t in zip(roll["prompt_ids"], roll["completion_ids"], rewards.tolist(), acc.tolist(),
                                    adv.tolist(), truncated.tolist())
    ]
    return stats


def maybe_update_ref(ref_model, policy, step, cfg):
    """Iterative GRPO (DeepSeekMath section 4.1.4): after GRPO step `step` (counted from 1; each takes
    cfg.num_iterations optimizer steps), reset pi_ref to the policy every cfg.ref_update_every steps. Returns True
    when it did."""
    if cfg.ref_update_every <= 0 or ref_model is None or step % cfg.ref_update_every != 0:
        return False
    ref_model.load_state_dict(policy.state_dict())
    return True
