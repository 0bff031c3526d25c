"""Distillation of a larger teacher into a smaller student: logit matching, and SFT on reward-filtered traces.

Papers: DeepSeek-R1 (arXiv 2501.12948), section 2.4 "Distillation" and 4.1 "Distillation v.s. Reinforcement
Learning": SFT of small models on ~800K teacher samples, the reasoning ones kept by rejection sampling (section
2.3.3: sample several responses per prompt, keep only the correct ones). Hinton, Vinyals & Dean 2015,
"Distilling the Knowledge in a Neural Network" (arXiv 1503.02531): match softened distributions softmax(z / T),
scale by T^2. GKD, Agarwal et al. 2024, "On-Policy Distillation of Language Models" (arXiv 2306.13649): reverse
KL and the generalized JSD(beta).

Two modes (DistillConfig.mode), both driven from train.py; this file sees logits, token ids, masks and rewards:
  "logits": distill_loss on sequences (teacher samples or dataset solutions), teacher logits computed on the fly.
  "traces": filter_traces keeps the teacher samples the reward accepts, then plain SFT on them (what R1 did).
Teacher and student share one tokenizer. Their embeddings may be padded past it differently (Qwen pads to a
multiple of 128): train.py compares the logits over the rows both have, and a student from scratch takes the
teacher's row count.

Conventions, with p = softmax(teacher / T) and q = softmax(student / T), per token over the vocabulary:
 1. forward_kl = KL(p || q) = sum_v p (log p - log q), mode-covering (Hinton); reverse_kl = KL(q || p),
    mode-seeking (GKD). Teacher logits are detached: no gradient ever reaches the teacher.
 2. The per-token divergence is averaged over the masked tokens, sum(d * mask) / sum(mask).clamp(min=1), then
    multiplied by T^2 (Hinton section 2) so the gradient, T (q - p) / n for forward KL, keeps its scale as T grows.
 3. jsd (GKD): beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q, beta in (0, 1) open.
    JSD / beta -> KL(p || q) as beta -> 0, JSD / (1 - beta) -> KL(q || p) as beta -> 1; symmetric, <= ln 2, at
    beta = 0.5. We do not special-case beta = 0 or 1 as TRL does (there JSD is 0): use the KL kinds instead.
 4. top_k > 0: the teacher is cut to its k largest logits and renormalized (p_k, zero elsewhere), so only (B, T, k)
    teacher numbers are needed. The student keeps its full-vocabulary log-probs (not renormalized), so mass it puts
    outside the teacher's top k is penalized: forward_kl is exactly KL(p_k || q), jsd exactly JSD(p_k, q).
    reverse_kl renormalizes the student over the same k tokens (KL(q || p_k) would be infinite).
 5. Log-probs and losses in fp32 (fp64 stays fp64), from log_softmax: no log(0). Logits must be finite.
 6. Mixed objective: loss = (1 - ce_weight) * distill + ce_weight * CE, the CE at T = 1 on the same tokens.
 7. filter_traces keeps the samples with reward >= threshold (1.0: correct), and by default drops repeated
    (prompt, completion) pairs so prompts the teacher finds easy do not dominate the SFT set (R1 is silent on this).
"""
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from config import check_rules

# -----------------------------------------------------------------------------
# config


@dataclass
class DistillConfig:
    teacher: str = ""  # teacher checkpoint folder; must share the student's tokenizer
    mode: str = "logits"  # "logits" = logit matching on sequences, "traces" = SFT on reward-filtered teacher samples
    kind: str = "forward_kl"  # logits mode: "forward_kl" KL(teacher||student), "reverse_kl", "jsd"
    temperature: float = 1.0  # T of the softened distributions (Hinton: 1-4); the loss is scaled by T^2
    jsd_beta: float = 0.5  # kind="jsd": weight of the teacher in the mixture m, in (0, 1); 0.5 = symmetric JSD
    top_k: int = 0  # keep only the teacher's k largest logits (e.g. 20-100); 0 = full vocabulary
    ce_weight: float = 0.0  # loss = (1 - ce_weight) * distill + ce_weight * CE on the same tokens
    source: str = "teacher"  # logits mode: "teacher" = teacher-sampled completions, "dataset" = worked solutions
    samples_per_prompt: int = 4  # N, teacher samples per prompt (traces mode only)
    sample_temperature: float = 1.0  # teacher sampling temperature (R1 evaluates at 0.6)
    max_new_tokens: int = 128  # teacher completion budget in tokens
    reward_threshold: float = 1.0  # traces mode: keep samples with reward >= this (1.0 = correct answer)
    dedup_traces: bool = True  # traces mode: keep one copy of a repeated (prompt, completion) pair
    traces_file: str = ""  # JSONL cache of the kept traces, settings in .meta.json; "" = out_dir/traces.jsonl

    def check(self):
        check_rules("distill", self, [
            ("mode", self.mode in ("logits", "traces"), "logits or traces"),
            ("kind", self.kind in ("forward_kl", "reverse_kl", "jsd"), "forward_kl, reverse_kl or jsd"),
            ("temperature", 0 < self.temperature < math.inf, "finite and > 0"),
            ("jsd_beta", 0 < self.jsd_beta < 1, "in (0, 1)"),
            ("top_k", self.top_k >= 0, ">= 0 (0: the full vocabulary)"),
            ("ce_weight", 0 <= self.ce_weight <= 1, "in [0, 1]"),
            ("source", self.source in ("teacher", "dataset"), "teacher or dataset"),
            ("samples_per_prompt", self.samples_per_prompt >= 1, "at least 1"),
            ("sample_temperature", 0 <= self.sample_temperature < math.inf, "finite and >= 0 (0: greedy)"),
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
            ("reward_threshold", -math.inf < self.reward_threshold <= 1,
             "a finite number <= 1 (the accuracy reward of a trace is 0 or 1)"),
            ("traces_file", not os.path.isdir(self.traces_file), "a JSONL file, not a folder")])


# -----------------------------------------------------------------------------
# the math: logits in, loss out


def distill_loss(student_logits, teacher_logits, mask, temperature=1.0, kind="forward_kl", beta=0.5, top_k=0):
    """Per-token divergence between softmax(teacher / T) and softmax(student / T), masked token mean, times T^2.
    student_logits, teacher_logits (B, T, V); mask (B, T) in {0, 1}. Conventions 1-5 of the docstring."""
    assert student_logits.shape == teacher_logits.shape, "teacher and student must share the vocabulary"
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # fp32, or fp64 when given fp64
    s = student_logits.to(dtype) / temperature  # (B, T, V)
    t = teacher_logits.detach().to(dtype) / temperature  # (B, T, V), the teacher is a constant
    logq = F.log_softmax(s, dim=-1)  # (B, T, V), log q over the full vocabulary
    if top_k > 0:
        t, idx = t.topk(top_k, dim=-1)  # (B, T, k), the teacher's k largest logits
        logq = logq.gather(-1, idx)  # (B, T, k), not renormalized (convention 4)
    logp = F.log_softmax(t, dim=-1)  # (B, T, k or V), log p (log p_k when top_k)

    if kind == "forward_kl":  # KL(p || q), Hinton
        d = (logp.exp() * (logp - logq)).sum(-1)  # (B, T)
    elif kind == "reverse_kl":  # KL(q || p), GKD
        if top_k > 0:
            logq = F.log_softmax(logq, dim=-1)  # (B, T, k), renormalized over the teacher's top k
        d = (logq.exp() * (logq - logp)).sum(-1)  # (B, T)
    elif kind == "jsd":  # GKD generalized JSD(beta), p = teacher, q = student
        if not 0 < beta < 1:
            raise ValueError(f"jsd needs 0 < beta < 1, got {beta}; use kind='forward_kl' or 'reverse_kl'")
        logm = torch.logaddexp(logp + math.log(beta), logq + math.log(1 - beta))  # (B, T, k or V), log m
        d = beta * (logp.exp() * (logp - logm)).sum(-1) + (1 - beta) * (logq.exp() * (logq - logm)).sum(-1)
        if top_k > 0:  # student mass outside the top k, where m = (1 - beta) q: q log(q / m) = -q log(1 - beta)
            q_out = (-torch.expm1(torch.logsumexp(logq, dim=-1))).clamp(min=0)  # (B, T), 1 - sum_k q
            d = d - (1 - beta) * q_out * math.log(1 - beta)
    else:
        raise ValueError(f"unknown kind {kind!r}; valid: 'forward_kl', 'reverse_kl', 'jsd'")

    mask = mask.to(d.dtype)
    return (d * mask).sum() / mask.sum().clamp(min=1) * temperature ** 2  # Hinton: times T^2


def masked_ce(logits, targets, mask):
    """Cross-entropy -log q(target) at T = 1, fp32, mean over the masked tokens. logits (B, T, V), targets (B, T)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)  # (B, T)
    mask = mask.to(ce.dtype)
    return (ce * mask).sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def distill_stats(student_logits, teacher_logits, targets, mask):
    """Flat dict of floats on the masked tokens: agree = fraction where argmax student == argmax teacher;
    ce and teacher_ce = cross-entropy of each model on the targets (T = 1)."""
    mask = mask.float()
    same = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float()  # (B, T)
    return {
        "agree": ((same * mask).sum() / mask.sum().clamp(min=1)).item(),
        "ce": masked_ce(student_logits, targets, mask).item(),
        "teacher_ce": masked_ce(teacher_logits, targets, mask).item(),
    }


def distill_objective(student_logits, teacher_logits, targets, mask, cfg):
    """The logits-mode training loss, convention 6: (1 - ce_weight) * distill_loss + ce_weight * CE.
    Returns (loss, stats), stats a flat dict of floats: loss, distill, ce, teacher_ce, agree."""
    dl = distill_loss(student_logits, teacher_logits, mask, temperature=cfg.temperature, kind=cfg.kind,
                      beta=cfg.jsd_beta, top_k=cfg.top_k)
    loss = dl
    if cfg.ce_weight > 0:
        loss = (1 - cfg.ce_weight) * dl + cfg.ce_weight * masked_ce(student_logits, targets, mask)
    stats = {"loss": loss.item(), "distill": dl.item(), **distill_stats(student_logits, teacher_logits, targets, mask)}
    return loss, stats


# -----------------------------------------------------------------------------
# traces: rejection sampling (DeepSeek-R1 section 2.3.3)


def filter_traces(samples, rewards, threshold=1.0, dedup=True):
    """Keep the samples whose reward is >= threshold, in order. samples: list of dicts with "prompt_ids" and
    "completion_ids" (other keys pass through); rewards: (N,) floats or tensor. With dedup, a repeated
    (prompt, completion) pair is kept once (convention 7). Returns (kept, keep_rate), keep_rate = the fraction
    of samples accepted by the reward, before dedup."""
    rewards = [float(r) for r in rewards]
    assert len(samples) == len(rewards), f"{len(samples)} samples but {len(rewards)} rewards"
    kept, seen, n_pass = [], set(), 0
    for sample, r in zip(samples, rewards):
        if not r >= threshold:  # a nan reward (a reward function that failed) does not pass
            continue
        n_pass += 1
        key = (tuple(sample["prompt_ids"]), tuple(sample["completion_ids"]))
        if dedup and key in seen:
            continue
        seen.add(key)
        kept.append(sample)
    return kept, n_pass / max(len(samples), 1)
