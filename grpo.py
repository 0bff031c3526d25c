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
Iterative GRPO (section 4.1.3): every `ref_update_every` steps the reference is reset to the policy.

Conventions and departures, each a switch in GRPOConfig (defaults reproduce DeepSeekMath):
 1. std is the population std (unbiased=False) plus eps=1e-4; a group whose rewards are all equal gets A = 0
    exactly (the paper leaves std = 0 undefined; TRL uses the sample std).
 2. agg="token-mean" (DAPO): sum over all tokens of the batch / number of tokens, not a per-sequence mean.
 3. agg="dr-grpo" (Dr. GRPO): sum over all tokens / (B * max_new_tokens), a constant: no 1/|o_i| length bias.
 4. scale_rewards=False (Dr. GRPO): A_i = r_i - mean(r), no division by the group std.
 5. clip_eps_high (DAPO clip-higher): the clip range is [1 - clip_eps, 1 + clip_eps_high].
 6. mask_truncated (DAPO overlong filtering): completions that hit max_new_tokens without eos leave the loss;
    their rewards still count in their group's baseline.
 7. skip_zero_std_groups (DAPO dynamic sampling, without re-sampling): groups whose raw accuracies are all
    equal leave the loss (with beta = 0 their A = 0 gives no gradient anyway; they only dilute the mean).
 8. max_grad_norm: we clip the gradient's global L2 norm before each optimizer step (not in the paper).
 9. num_iterations (mu) > 1: each iteration is one optimizer step on the whole rollout batch.
"""
import math
import time
from dataclasses import dataclass

import torch

# -----------------------------------------------------------------------------
# config


@dataclass
class GRPOConfig:
    group_size: int = 8  # G, outputs sampled per prompt (DeepSeekMath: 64)
    max_new_tokens: int = 64  # completion budget in tokens; also the constant of agg="dr-grpo"
    temperature: float = 1.0  # rollout sampling temperature
    top_p: float = 1.0  # rollout nucleus sampling; 1.0 = off
    beta: float = 0.04  # KL weight, DeepSeekMath Eq. 3; 0 skips the reference model entirely
    clip_eps: float = 0.2  # eps of the clipped ratio, DeepSeekMath Eq. 3
    clip_eps_high: float = 0.0  # DAPO clip-higher: upper clip 1 + this (DAPO uses 0.28); 0 = same as clip_eps
    num_iterations: int = 1  # mu, optimizer steps per rollout; 1 = on-policy (ratio == 1, no old-logp pass)
    agg: str = "seq-mean"  # loss aggregation: "seq-mean" (DeepSeekMath), "token-mean" (DAPO), "dr-grpo"
    scale_rewards: bool = True  # divide advantages by the group std; False = Dr. GRPO
    ref_update_every: int = 0  # iterative GRPO: reset the reference to the policy every N steps; 0 = never
    mask_truncated: bool = False  # DAPO: completions cut at max_new_tokens (no eos) leave the loss
    skip_zero_std_groups: bool = False  # DAPO: groups with all-equal accuracy leave the loss
    micro_batch_size: int = 32  # sequences per forward/backward; accumulation makes the update independent of it
    max_grad_norm: float = 1.0  # clip the global gradient L2 norm before the optimizer step; 0 = no clipping


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
        raise ValueError(f"unknown agg {agg!r}; valid: 'seq-mean', 'token-mean', 'dr-grpo'")

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


def token_logprobs(logits, targets):
    """log pi(targets): logits (B, T, V), targets (B, T) -> (B, T) fp32. logsumexp + gather, so no second
    (B, T, V) log-softmax tensor is kept."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)  # (B, T)
