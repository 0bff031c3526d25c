"""
Training entry point for r1-mini: one command runs one stage, configured by a TOML file.

    python train.py --config configs/NAME.toml [--section.key=value ...] [--init CKPT] [--out_dir DIR]
    torchrun --nproc_per_node N train.py --config ...     # N processes: DDP (or FSDP2), see dist.py

Stages (the top-level `stage` key), each a short `run_<stage>` function (pipeline: pipeline.run_pipeline):
    pretrain   next-token loss on packed documents
    sft        loss on the completion tokens of prompt/completion pairs
    grpo       grpo.grpo_step on sampled prompts, rewards from reward.py (decoded here, never in grpo.py)
    distill    logit matching against a teacher, or SFT on its reward-filtered traces (distill.py)
    pipeline   several of the above in order (pipeline.py)
pretrain, sft and distill share train_loop; grpo has its own loop around grpo_step.

Checkpoints and logs: see checkpoint.py. Batches and rollouts draw from generators that are a pure function of
(seed, step), so `--train.resume=true` continues bitwise from the newest checkpoint in out_dir.
"""

import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import config as C
import data as D
import dist
import distill
import eval as E
import grpo
import memory
import pipeline
from checkpoint import (RunLog, list_checkpoints, prepare_out_dir, prune_checkpoints, read_json, read_jsonl,
                        rng_state, save_checkpoint, set_rng_state, warn_if_config_changed)
from distill import DistillConfig
from grpo import GRPOConfig
from model import ModelConfig, Transformer
from reward import accuracy_reward, format_reward


@dataclass
class TrainConfig:
    max_steps: int = 1000         # optimizer steps (grpo: GRPO steps, each grpo.num_iterations optimizer steps)
    batch_size: int = 16          # sequences per micro-batch (grpo: prompts per step)
    grad_accum: int = 1           # micro-batches per optimizer step, over all ranks (a multiple of the rank count;
                                  # grpo: unused, it accumulates over grpo.micro_batch_size)
    lr: float = 1e-3              # peak learning rate (AdamW)
    warmup_steps: int = 50        # linear warmup, then cosine decay to min_lr_frac * lr
    min_lr_frac: float = 0.1      # final lr as a fraction of the peak
    weight_decay: float = 0.1     # AdamW decay, on matrices only (not norms or biases)
    beta1: float = 0.9            # AdamW's first-moment decay
    beta2: float = 0.95           # AdamW's second-moment decay
    grad_clip: float = 1.0        # max global grad norm, 0 disables (grpo clips by grpo.max_grad_norm instead)
    log_every: int = 10           # steps between metrics.jsonl rows
    eval_every: int = 200         # steps between held-out evaluations; 0 = only at the end
    eval_n: int = 100             # held-out problems per evaluation (greedy); 0 disables evaluation
    eval_batch_size: int = 64     # prompts per generate call during evaluation
    max_new_tokens: int = 192     # generation budget during evaluation
    n_samples: int = 4            # decoded samples per evaluation written to samples.jsonl
    save_every: int = 500         # steps between checkpoints
    keep_last: int = 2            # step checkpoints kept in out_dir (the final one always stays; 0 keeps none,
                                  # and a killed run then starts over)
    seed: int = 0                 # seeds init, batches and sampling
    device: str = "auto"          # auto (cuda if present), cpu or cuda; bf16 autocast on cuda
    resume: bool = False          # continue from the newest checkpoint in out_dir
    bf16: bool = True             # bf16 autocast on CUDA (log-probs, ratios, KL, losses stay fp32); CPU is fp32
    fsdp: bool = False            # FSDP2 under torchrun: shard weights, grads, optimizer state (not for grpo);
                                  # no held-out eval during training then (run eval.py on final)
    check_memory: bool = True     # refuse a run whose memory plan (memory.py, printed at start) exceeds the device
    activation_checkpointing: bool = False  # recompute each block in backward: activations ~L x smaller, ~1.3x time
    compile: bool = False         # torch.compile the training forward (not sampling): ~30 s a shape; 1.6-1.8x, H100

    def check(self):
        C.check_rules("train", self, [
            ("max_steps", self.max_steps >= 1, "at least 1"), ("batch_size", self.batch_size >= 1, "at least 1"),
            ("grad_accum", self.grad_accum >= 1, "at least 1"), ("lr", 0 <= self.lr < math.inf, "finite, >= 0"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"), ("min_lr_frac", 0 <= self.min_lr_frac <= 1, "in [0, 1]"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"), ("beta1", 0 <= self.beta1 < 1, "in [0, 1)"),
            ("beta2", 0 <= self.beta2 < 1, "in [0, 1)"), ("grad_clip", self.grad_clip >= 0, ">= 0 (0: no clipping)"),
            ("log_every", self.log_every >= 1, "at least 1"), ("eval_every", self.eval_every >= 0, ">= 0"),
            ("eval_n", self.eval_n >= 0, ">= 0"), ("eval_batch_size", self.eval_batch_size >= 1, "at least 1"),
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"), ("n_samples", self.n_samples >= 0, ">= 0"),
            ("save_every", self.save_every >= 1, "at least 1"), ("keep_last", self.keep_last >= 0, ">= 0"),
            ("seed", 0 <= self.seed < 2**32, "in [0, 2**32)"),
            ("device", self.device in ("auto", "cpu", "cuda"), "auto, cpu or cuda")])


@dataclass
class RewardConfig:
    accuracy_weight: float = 1.0  # GRPO reward = accuracy_weight * accuracy + format_weight * format
    format_weight: float = 0.0    # R1-Zero format reward weight (<think>..</think><answer>..</answer>): r1 template

    def check(self):
        a, f = self.accuracy_weight, self.format_weight
        C.check_rules("reward", self, [
            ("accuracy_weight", 0 <= a < math.inf, "a finite number >= 0"),
            ("format_weight", 0 <= f < math.inf, "a finite number >= 0"),
            ("accuracy_weight", a + f > 0, "> 0 where format_weight is 0: else every reward is 0, nothing is learned")])


@dataclass
class Config:
    stage: str = "sft"            # pretrain | sft | grpo | distill | pipeline
    out_dir: str = "out/run"      # checkpoints, metrics.jsonl, samples.jsonl
    init: str = ""                # checkpoint folder to start from (ours or Hugging Face); "" = from scratch
    model: ModelConfig = field(default_factory=ModelConfig)
    data: D.DataConfig = field(default_factory=D.DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)  # batch_size = prompts per GRPO step
    reward: RewardConfig = field(default_factory=RewardConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # stage = "pipeline": steps = ["name", ...] run in order, each in out_dir/name; [pipeline.name] holds that
    # step's overrides of this config (its `stage`, and `init` = an earlier step's name or a folder)
    pipeline: dict = field(default_factory=dict)

def load_config(path=None, overrides=()):
    """The run config: dataclass defaults, then the TOML file, then CLI overrides (see config.py)."""
    return C.load_config(Config, path, overrides)


# -----------------------------------------------------------------------------
# Setup shared by the stages


def resolve_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


autocast = E.autocast  # bf16 on CUDA when train.bf16; eval.py evaluates a run's checkpoints the same way


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tokenizer(cfg, train_problems):
    """The tokenizer of the init checkpoint, the one the config names, or a new one trained on the data
    (by rank 0 under torchrun; the other ranks read its file, see start_run)."""
    if cfg.init:
        E.check_checkpoint(cfg.init)  # names what is missing (a run folder instead of its final/, a typo)
        return D.load_tokenizer(cfg.init)
    if cfg.data.tokenizer:
        return D.load_tokenizer(cfg.data.tokenizer)
    os.makedirs(cfg.out_dir, exist_ok=True)
    prefix = os.path.join(cfg.out_dir, "tokenizer")
    if not dist.is_main():
        return D.Tokenizer(prefix + ".model")
    return D.train_tokenizer(D.tokenizer_corpus(train_problems), prefix, cfg.data.vocab_size)


def build_model(cfg, tok, device, vocab_size=None):
    """The model to train: from the init checkpoint, or a fresh one with the tokenizer's vocabulary (or vocab_size
    embedding rows, a padded vocabulary as a distillation teacher's)."""
    if cfg.init:
        model = Transformer.from_pretrained(cfg.init, dtype=torch.float32)
        cfg.model = model.cfg  # the run config records the architecture actually trained
    else:
        cfg.model.vocab_size = vocab_size or tok.vocab_size
        model = Transformer(cfg.model)
    return model.to(device)


def build_optimizer(model, tcfg):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2))


def lr_at(step, tcfg):
    """Linear warmup to lr, then cosine decay to min_lr_frac * lr at max_steps."""
    if step < tcfg.warmup_steps:
        return tcfg.lr * (step + 1) / tcfg.warmup_steps
    progress = (step - tcfg.warmup_steps) / max(1, tcfg.max_steps - tcfg.warmup_steps)
    return tcfg.lr * (tcfg.min_lr_frac + (1 - tcfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# -----------------------------------------------------------------------------
# The shared loop: a stage supplies batch_fn(step, micro) -> (x, y, mask) and the eval problems


def lm_loss(logits, y, mask=None):
    """Mean next-token cross-entropy in fp32, over the positions where mask is 1 (all when None)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)  # (B, T)
    if mask is None:
        return ce.mean()
    return (ce * mask).sum() / mask.sum().clamp(min=1)


def evaluate_and_log(model, tok, problems, cfg, device, step, log):
    """Greedy held-out accuracy with eval.py's function, so metrics.jsonl and eval reports agree."""
    if not problems:
        return {}
    model.eval()
    with autocast(device, cfg.train.bf16):
        metrics, samples = E.greedy_eval(model, tok, problems, cfg.data.template, cfg.train.max_new_tokens,
                                         cfg.train.eval_batch_size)
    model.train()
    log.log_samples(step, samples[: cfg.train.n_samples])
    return {f"eval/{k}": v for k, v in metrics.items()}


def check_fits(model, prompts, max_new_tokens, what):
    """Fail at the start, not at the first evaluation or rollout: every prompt (token ids) plus max_new_tokens
    must fit the model's context."""
    longest = max((len(p) for p in prompts), default=0)
    if longest + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"the longest {what} prompt is {longest} tokens: with {max_new_tokens} new tokens it "
                         f"exceeds model.max_seq_len={model.cfg.max_seq_len}; lower the new-token budget or raise "
                         "model.max_seq_len")


def train_loop(cfg, run, batch_fn, loss_fn=None):
    """Optimize for cfg.train.max_steps steps with warmup + cosine lr, grad accumulation and clipping;
    log, evaluate and checkpoint on schedule; write out_dir/final at the end.
    loss_fn(model, x, y, mask) -> (loss, stats) replaces the next-token loss (distillation uses it).
    Under torchrun, rank r takes micro-batches r, r + W, ... of each step (see dist.py)."""
    tc, model, tok, opt, device, start_step = cfg.train, run.model, run.tok, run.opt, run.device, run.start
    W = dist.world()
    check_world(cfg, W)
    fwd = dist.wrap(model, device, tc.fsdp, tc.compile)  # DDP under torchrun (not FSDP2); compiled on request
    eval_problems = run.test[: tc.eval_n]  # their fit to the context was checked by report_memory
    log = RunLog(cfg.out_dir, start_step) if dist.is_main() else None
    pbar = tqdm(range(start_step, tc.max_steps), initial=start_step, total=tc.max_steps, desc=cfg.stage,
                disable=None if dist.is_main() else True)
    t0, tokens = time.time(), 0
    for step in pbar:
        lr = lr_at(step, tc)
        for g in opt.param_groups:
            g["lr"] = lr
        loss_sum, stats, step_tokens = 0.0, {}, 0
        mine = range(dist.rank(), tc.grad_accum, W)  # this rank's micro-batches (all of them in one process)
        for micro in mine:
            x, y, mask = batch_fn(step, micro)
            x, y = x.to(device), y.to(device)
            mask = mask.to(device) if mask is not None else None
            with dist.grad_sync(fwd, micro == mine[-1]):  # reduce gradients once, after the last micro-batch
                with autocast(device, tc.bf16):
                    if loss_fn is None:
                        loss, st = lm_loss(fwd(x), y, mask), {}  # logits (B, T, V)
                    else:
                        loss, st = loss_fn(fwd, x, y, mask)
                # mean over all grad_accum micro-batches; DDP/FSDP2 average over W ranks, so we scale by W
                (loss / tc.grad_accum * W).backward()
            loss_sum += loss.item() / tc.grad_accum
            for k, v in st.items():
                stats[k] = stats.get(k, 0.0) + v / tc.grad_accum
            step_tokens += int(mask.sum()) if mask is not None else y.numel()
        if W > 1:  # every rank's share, so each rank sees the global numbers (and stops together on a NaN)
            loss_sum, step_tokens, *vals = dist.sum_floats([loss_sum, step_tokens, *stats.values()])
            stats = dict(zip(stats, vals))
        tokens += step_tokens
        if not math.isfinite(loss_sum):
            stop_non_finite(cfg, f"loss {loss_sum}", step + 1)
        grad_norm = dist.clip_grad_norm(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else 1e30)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        row = {}
        # rank 0 evaluates alone; with FSDP2 it cannot (sampling would need the other ranks' shards): eval.py after
        if tc.eval_n and ((tc.eval_every and done % tc.eval_every == 0) or done == tc.max_steps) and log \
                and not tc.fsdp:
            row.update(evaluate_and_log(model, tok, eval_problems, cfg, device, done, log))
        if log and (done % tc.log_every == 0 or done == tc.max_steps or row):
            dt = time.time() - t0
            row = {"step": done, "stage": cfg.stage, **stats, "loss": loss_sum, "lr": lr,
                   "grad_norm": grad_norm, "tokens_per_s": tokens / max(dt, 1e-9), **row}
            log.log(row)
            pbar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
            t0, tokens = time.time(), 0
        save_on_schedule(cfg, model, tok, opt, done)
    if log:
        log.close()
    return model


def stop_non_finite(cfg, what, done):
    """Stop the run at step `done` (counted from 1, as checkpoints are): nothing of it is saved, so the newest
    checkpoint is the last good one."""
    last = list_checkpoints(cfg.out_dir)
    raise FloatingPointError(f"non-finite {what} at step {done}; stopping without saving. "
                             f"Last good checkpoint: {last[-1] if last else 'none'}")


def save_on_schedule(cfg, model, tok, opt, done, extra=None):
    """A step checkpoint every save_every steps (keeping the newest keep_last), `final` after the last step.
    Every rank calls it (FSDP2 gathers the full state); rank 0 writes. Weights that an update made non-finite
    (the loss before it was finite) are never saved."""
    tc = cfg.train
    if done % tc.save_every and done < tc.max_steps:
        return
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]  # FSDP2: this rank's shard
    if dist.sum_floats([float(sum(not torch.isfinite(t).all() for t in local))])[0]:  # every rank stops together
        stop_non_finite(cfg, "weights", done)
    weights, opt_state = dist.full_state(model, opt)
    if dist.is_main():
        state = {"step": done, "optimizer": opt_state, "rng": rng_state(), **(extra or {})}
        if done == tc.max_steps:
            save_checkpoint(os.path.join(cfg.out_dir, "final"), model, tok, cfg, state, weights)
        else:
            save_checkpoint(os.path.join(cfg.out_dir, f"ckpt-{done:07d}"), model, tok, cfg, state, weights)
            prune_checkpoints(cfg.out_dir, tc.keep_last)
    dist.barrier()  # no rank runs ahead while the checkpoint is written


@dataclass
class Run:
    """What every stage starts from (start_run)."""
    device: torch.device
    tok: object           # data.Tokenizer or data.HFTokenizer
    model: Transformer
    opt: torch.optim.Optimizer
    start: int            # the step to start from (> 0 when resuming)
    state: dict           # the resumed train_state.pt ({} on a fresh start)
    train: list           # training problems
    test: list            # held-out problems


def start_run(cfg, vocab_size=None):
    """Problems, device, seed, tokenizer, model and optimizer for a stage, restored from the newest checkpoint
    when resuming. None when out_dir/final exists and we resume: the stage is done (unless train.max_steps is
    now higher: the run is then extended from `final`, see checkpoint.prepare_out_dir).
    Under torchrun every rank builds the same model (same seed, same checkpoint); FSDP2 shards it here."""
    device = dist.setup(resolve_device(cfg.train.device))
    resume_from = prepare_out_dir(cfg)
    if resume_from == "final":
        if dist.is_main():
            print(f"{cfg.out_dir}/final exists: stage {cfg.stage} is done, nothing to resume")
        return None
    if resume_from and dist.is_main():
        warn_if_config_changed(cfg, resume_from)
    train_problems, test = D.load_problems(cfg.data, "train"), D.load_problems(cfg.data, "test")
    seed_everything(cfg.train.seed)
    if resume_from:
        tok = D.load_tokenizer(resume_from)
        model = Transformer.from_pretrained(resume_from, dtype=torch.float32).to(device)
        cfg.model = model.cfg
    else:
        with dist.rank0_first():
            tok = build_tokenizer(cfg, train_problems)
        model = build_model(cfg, tok, device, vocab_size)
    model.checkpointing = cfg.train.activation_checkpointing
    cfg.data.template = D.resolve_template(cfg.data.template, tok)  # "chat" -> the tokenizer's format, recorded
    if cfg.train.fsdp:
        if not torch.distributed.is_initialized():  # fully_shard would fail deep in torch, asking for RANK
            raise ValueError("train.fsdp shards over torchrun's processes: launch with torchrun, or drop train.fsdp")
        dist.shard(model, device)
        if cfg.train.eval_n and dist.is_main():  # see train_loop
            print("train.fsdp: no held-out evaluation during training (train.eval_n is not used); "
                  "run eval.py on the final checkpoint", flush=True)
    opt = build_optimizer(model, cfg.train)
    start_step, state = 0, {}
    if resume_from:
        file = os.path.join(resume_from, "train_state.pt")
        try:
            state = torch.load(file, weights_only=False)
        except Exception as e:  # noqa: BLE001  (damaged on disk: the atomic save never leaves a half-written one)
            raise ValueError(f"{file} cannot be read ({type(e).__name__}: {e}); move {resume_from} away to resume "
                             "from the checkpoint before it") from None
        dist.load_optimizer(model, opt, state["optimizer"])
        set_rng_state(state["rng"])
        start_step = state["step"]
        if start_step >= cfg.train.max_steps:  # nothing left to run, and no `final` would ever be written
            raise ValueError(f"{resume_from} is at step {start_step}, not before train.max_steps="
                             f"{cfg.train.max_steps}: raise max_steps, or start a new out_dir")
        if dist.is_main():
            print(f"resuming {cfg.stage} from {resume_from} at step {start_step}")
            if os.path.basename(resume_from) == "final":
                print(f"extending the finished run to train.max_steps={cfg.train.max_steps}: the lr schedule is now "
                      f"laid out over {cfg.train.max_steps} steps (the steps already taken followed the old one)")
    model.train()
    return Run(device, tok, model, opt, start_step, state, train_problems, test)


def report_memory(cfg, run, micro_tokens, frozen=None, kv_rows=0, kv_len=0, kv_caches=(), loss_logits=0):
    """Print the run's memory plan per device (memory.py) and refuse one that cannot fit (train.check_memory).
    kv_rows x kv_len: the run's own generate calls; kv_caches: others, (ModelConfig, rows, len) (a teacher's);
    the in-training evaluation's greedy batches are added here, after checking that its prompts fit the context.
    loss_logits: memory.estimate's (logit matching)."""
    tc, device = cfg.train, run.device
    kv_caches = list(kv_caches)
    if tc.eval_n > 0 and run.test and not tc.fsdp:  # rank 0's held-out evaluation (none under FSDP2, see train_loop)
        ev = E.encode_prompts(run.tok, run.test[: tc.eval_n], cfg.data.template)
        check_fits(run.model, ev, tc.max_new_tokens, "held-out (train.eval_n, train.max_new_tokens)")
        kv_caches.append((run.model.cfg, min(tc.eval_batch_size, len(ev)), max(map(len, ev)) + tc.max_new_tokens))
    est = memory.estimate(run.model.cfg, run.model.num_params(), micro_tokens, amp=tc.bf16 and device.type == "cuda",
                          world=dist.world(), fsdp=tc.fsdp, checkpointing=tc.activation_checkpointing,
                          frozen_params=frozen.num_params() if frozen else 0,
                          frozen_bytes=frozen.tok_embeddings.weight.element_size() if frozen else None,
                          kv_rows=kv_rows, kv_len=kv_len, kv_caches=kv_caches, loss_logits=loss_logits,
                          loss_vocab=frozen.cfg.vocab_size if frozen and loss_logits else None)
    cap = memory.capacity(device)
    line = memory.check(est, cap) if tc.check_memory else memory.describe(est, cap)
    if dist.is_main():
        print(line)
    return est


def step_generator(seed, step, micro, device="cpu", stream=0):
    """The batch RNG is a pure function of (seed, stream, step, micro): resumed runs see the same batches, and
    distinct tuples get distinct streams. Below micro 97 (stream 0) the seed is the linear formula of earlier
    versions, so their runs (the README's demo numbers) reproduce; past it that formula would give micro 97 of
    one step the stream of micro 0 of the next, so there (and for other streams) the seed is a hash, 64 bits."""
    if stream == 0 and 0 <= micro < 97:
        key = (seed * 1_000_003 + step) * 97 + micro
    else:
        key = int(np.random.SeedSequence([seed, stream, step, micro]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(key)


# -----------------------------------------------------------------------------
# Stages


def run_pretrain(cfg):
    run = start_run(cfg)
    if run is None:
        return
    docs = D.pretrain_documents(run.train, cfg.data.chat_frac, cfg.data.seed)
    stream = D.pack_documents(run.tok, docs)  # (N,) token ids, documents joined by eos
    T = min(cfg.data.seq_len, run.model.cfg.max_seq_len)
    report_memory(cfg, run, cfg.train.batch_size * T)

    def batch_fn(step, micro):
        x, y = D.packed_batch(stream, cfg.train.batch_size, T, step_generator(cfg.train.seed, step, micro))
        return x, y, None

    train_loop(cfg, run, batch_fn)


def run_sft(cfg):
    run = start_run(cfg)
    if run is None:
        return
    pairs, T = sft_pairs(cfg, run)
    report_memory(cfg, run, cfg.train.batch_size * T)
    train_loop(cfg, run, sft_batches(pairs, cfg, run.tok))


def sft_pairs(cfg, run, stage="sft"):
    """The training problems as (prompt, completion) token pairs cut to T = min(data.seq_len, model.max_seq_len)
    tokens, and the longest batch row they make (at most T: sft_batch pads to its longest pair, less one). A prompt
    of T tokens or more leaves no completion token to learn: it is dropped (said), and a set with none left is an
    error rather than a run that trains on nothing."""
    T = min(cfg.data.seq_len, run.model.cfg.max_seq_len)
    pairs = [D.encode_sft(run.tok, p, cfg.data.template, T) for p in run.train]
    kept = [(p, c) for p, c in pairs if c]
    if not kept:
        raise ValueError(f"every {stage} prompt is longer than data.seq_len={T} tokens: no completion token is left "
                         "to train on; raise data.seq_len (and model.max_seq_len)")
    if len(kept) < len(pairs) and dist.is_main():
        print(f"{stage}: dropped {len(pairs) - len(kept)} of {len(pairs)} problems whose prompt fills "
              f"data.seq_len={T} tokens")
    return kept, min(T, max(len(p) + len(c) for p, c in kept) - 1)


def sft_batches(pairs, cfg, tok):
    """batch_fn over (prompt_ids, completion_ids) pairs: batch_size random pairs, a pure function of the step."""
    def batch_fn(step, micro):
        idx = torch.randint(len(pairs), (cfg.train.batch_size,), generator=step_generator(cfg.train.seed, step, micro))
        return D.sft_batch([pairs[i] for i in idx.tolist()], tok.pad_id)
    return batch_fn


def make_reward_fn(tok, golds, rcfg):
    """reward_fn(prompt_ids, completion_ids) -> (shaped reward, accuracy), as grpo.rollout expects.
    golds maps a prompt (tuple of ids) to its gold answer. Decoding and scoring happen here, never in grpo.py."""
    def reward_fn(prompt_ids, completion_ids):
        text = tok.decode(completion_ids)
        acc = accuracy_reward(text, golds[tuple(prompt_ids)])
        fmt = format_reward(text) if rcfg.format_weight else 0.0
        return rcfg.accuracy_weight * acc + rcfg.format_weight * fmt, acc
    return reward_fn


def rollout_metrics(tok, samples, reduce=None):
    """Per-step numbers that need the decoded text or the per-sample split: format rate and the completion
    lengths of correct and wrong samples. reduce (under torchrun): over every rank's samples."""
    fmt = [format_reward(tok.decode(s["completion_ids"])) for s in samples]
    right = [len(s["completion_ids"]) for s in samples if s["accuracy"] > 0]
    wrong = [len(s["completion_ids"]) for s in samples if s["accuracy"] <= 0]
    sums = [sum(fmt), len(fmt), sum(right), len(right), sum(wrong), len(wrong)]
    if reduce is not None:
        sums = reduce(torch.tensor(sums, dtype=torch.float64)).tolist()
    mean = lambda total, n: total / n if n else float("nan")
    return {"format_rate": mean(*sums[0:2]), "len_correct": mean(*sums[2:4]), "len_wrong": mean(*sums[4:6])}


def run_grpo(cfg):
    """GRPO from a checkpoint: each step samples batch_size distinct training prompts, G completions each,
    and takes grpo.grpo_step. The reference model is the init checkpoint (reset to the policy every
    grpo.ref_update_every steps, and then saved with the training state so a resume replays exactly).
    Under torchrun the prompts are cut into rollout chunks of grpo.rollout_prompts, chunk c on rank c % W with
    its own generator (dist.py); with rollout_prompts set, the samples, and so the update, do not depend on the
    number of ranks (the default, batch_size / W, gives each rank one chunk, so its samples do)."""
    check_inputs(cfg)
    cfg.grpo.check()
    if cfg.train.fsdp:  # sampling through sharded weights would need every rank in lockstep at every token
        raise ValueError("train.fsdp is not supported for grpo: use DDP (the default under torchrun)")
    run = start_run(cfg)
    if run is None:
        return
    gc, tc, device, tok, model, opt, start = cfg.grpo, cfg.train, run.device, run.tok, run.model, run.opt, run.start
    W = dist.world()
    check_world(cfg, W)
    C = gc.rollout_prompts or tc.batch_size // W  # prompts per rollout chunk
    mine = range(dist.rank(), tc.batch_size // C, W)  # this rank's chunks
    reduce = dist.all_sum if W > 1 else None
    policy = torch.compile(model) if tc.compile else model  # compiles the update's forward; generate stays eager
    ref = None
    if gc.beta > 0:  # frozen: bf16 on CUDA (half the memory), fp32 on CPU
        ref_dtype = torch.bfloat16 if tc.bf16 and device.type == "cuda" else torch.float32
        ref = Transformer.from_pretrained(cfg.init, dtype=ref_dtype).to(device).eval().requires_grad_(False)
        if "ref_model" in run.state:
            ref.load_state_dict(run.state["ref_model"])
    prompts = E.encode_prompts(tok, run.train, cfg.data.template)
    if tc.batch_size > len(prompts):
        raise ValueError(f"train.batch_size={tc.batch_size} distinct prompts per step, but the training set has "
                         f"{len(prompts)}")
    check_fits(model, prompts, gc.max_new_tokens, "training (grpo.max_new_tokens)")
    S = max(len(p) for p in prompts) + gc.max_new_tokens  # longest sequence of a rollout or an update
    rows = min(gc.micro_batch_size, tc.batch_size // W * gc.group_size)  # a micro-batch holds at most a rank's samples
    report_memory(cfg, run, rows * S, ref, kv_rows=C * gc.group_size, kv_len=S)
    golds = {tuple(ids): p["answer"] for ids, p in zip(prompts, run.train)}
    reward_fn = make_reward_fn(tok, golds, cfg.reward)
    log = RunLog(cfg.out_dir, start) if dist.is_main() else None  # rank 0 logs and evaluates
    eval_problems = run.test[: tc.eval_n]  # their fit to the context was checked by report_memory
    if start == 0 and tc.eval_n and log:
        log.log({"step": 0, "stage": cfg.stage, **evaluate_and_log(model, tok, eval_problems, cfg, device, 0, log)})
    pbar = tqdm(range(start, tc.max_steps), initial=start, total=tc.max_steps, desc=cfg.stage,
                disable=None if log else True)
    ema = run.state.get("reward_ema")  # the moving average of the reward resumes with the run
    for step in pbar:
        lr = lr_at(step, tc)
        for g in opt.param_groups:
            g["lr"] = lr
        pick = torch.randperm(len(prompts), generator=step_generator(tc.seed, step, 0))[: tc.batch_size].tolist()
        my_prompts = [prompts[i] for c in mine for i in pick[c * C:(c + 1) * C]]
        gens = [step_generator(tc.seed, step, 1 + c, device) for c in mine]  # one per chunk
        with autocast(device, tc.bf16):
            stats = grpo.grpo_step(policy, ref, opt, my_prompts, reward_fn, gc, eos_id=tok.stop_ids, generator=gens,
                                   reduce=reduce)
        samples = stats.pop("_samples")
        if not math.isfinite(stats["loss"]):
            stop_non_finite(cfg, f"GRPO loss {stats['loss']}", step + 1)
        done = step + 1
        grpo.maybe_update_ref(ref, model, done, gc)
        ema = stats["reward_mean"] if ema is None else 0.9 * ema + 0.1 * stats["reward_mean"]
        eval_now = tc.eval_n and ((tc.eval_every and done % tc.eval_every == 0) or done == tc.max_steps)
        if eval_now or done % tc.log_every == 0 or done == tc.max_steps:
            row = evaluate_and_log(model, tok, eval_problems, cfg, device, done, log) if eval_now and log else {}
            row = {"step": done, "stage": cfg.stage, "lr": lr, **stats, "reward_ema": ema,
                   **rollout_metrics(tok, samples, reduce), **row}  # every rank: rollout_metrics sums over them
            # the first n_samples completions of the step's chunk order, whichever rank sampled them (a collective)
            per = C * gc.group_size  # completions per chunk
            firsts = [(c, samples[j * per:(j + 1) * per][: tc.n_samples]) for j, c in enumerate(mine)]  # by chunk
            every = sorted((x for part in dist.gather_objects(firsts) for x in part), key=lambda x: x[0])
            shown = [s for _, chunk in every for s in chunk][: tc.n_samples]
            if log:
                log.log(row)
                log.log_samples(done, [{"completion": tok.decode(s["completion_ids"]), "reward": s["reward"],
                                        "accuracy": s["accuracy"]} for s in shown])
        pbar.set_postfix(reward=f"{stats['reward_mean']:.2f}", kl=f"{stats['kl']:.3f}")
        extra = {"reward_ema": ema}
        if ref is not None and gc.ref_update_every > 0:
            extra["ref_model"] = ref.state_dict()
        save_on_schedule(cfg, model, tok, opt, done, extra)
    if log:
        log.close()


def same_tokenizer(a, b):
    probe = "Compute 12 + 7/8. <think>\n</think> <answer>\\boxed{x^2}</answer>"
    return a.vocab_size == b.vocab_size and a.eos_id == b.eos_id and a.encode(probe) == b.encode(probe)


def teacher_traces(cfg, teacher, tok, problems, prompts, device):
    """DeepSeek-R1-style rejection sampling: N teacher samples per prompt, keep those the reward accepts.
    The kept traces are cached as JSONL (distill.traces_file) and reused when the file exists; the settings they were
    sampled with go beside it (.meta.json), and a file sampled with other settings is an error, not reused (a file
    without one, made elsewhere, is used as it is)."""
    dc = cfg.distill
    path = dc.traces_file or os.path.join(cfg.out_dir, "traces.jsonl")
    meta_path, settings = os.path.splitext(path)[0] + ".meta.json", traces_settings(cfg, problems)
    if os.path.exists(path) and os.path.exists(meta_path):
        old = read_json(meta_path, f": delete it and {path} to sample the teacher again")
        changed = [k for k in settings if old.get(k) != settings[k]]
        if changed:
            raise ValueError(f"{path} holds teacher traces sampled with other settings ({', '.join(changed)}): "
                             "delete it to sample the teacher again, or set distill.traces_file to another file")
    if not os.path.exists(path):  # prompts: the problems' encoded prompts
        flat = [i for i in range(len(problems)) for _ in range(dc.samples_per_prompt)]  # (P*N,) problem index
        gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
        with autocast(device, cfg.train.bf16):
            comps = E.complete(teacher, [prompts[i] for i in flat], dc.max_new_tokens, tok.stop_ids,
                               cfg.train.eval_batch_size, dc.sample_temperature, 1.0, gen, desc="teacher traces")
        comps = tokens_only(comps, tok)
        samples = [{"prompt_ids": prompts[i], "completion_ids": c, "question": problems[i]["question"]}
                   for i, c in zip(flat, comps)]
        rewards = [accuracy_reward(tok.decode(c), problems[i]["answer"]) for i, c in zip(flat, comps)]
        kept, rate = distill.filter_traces(samples, rewards, dc.reward_threshold, dc.dedup_traces)
        print(f"teacher traces: kept {len(kept)} of {len(samples)} (accepted {rate:.1%}) -> {path}")
        if not kept:  # not cached: a re-run with other settings samples again
            raise ValueError("the teacher produced no accepted trace; check the teacher or lower "
                             "[distill].reward_threshold")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        D.write_atomic(meta_path, json.dumps(settings, indent=2).encode())  # first: traces never lack theirs
        D.write_atomic(path, "".join(json.dumps(k) + "\n" for k in kept).encode())
    kept = read_jsonl(path)  # a line that is not JSON is named
    if not kept:
        raise ValueError(f"{path} holds no trace: delete it to sample the teacher again")
    for i, k in enumerate(kept, 1):
        ids = [k.get(key) if isinstance(k, dict) else None for key in ("prompt_ids", "completion_ids")]
        if not all(isinstance(x, list) and all(type(t) is int for t in x) for x in ids):
            raise ValueError(f"{path}, trace {i}: needs prompt_ids and completion_ids, lists of token ids")
    return [(k["prompt_ids"], k["completion_ids"]) for k in kept]


def traces_settings(cfg, problems):
    """What decides which teacher traces are sampled and kept (not the seed or the batching: those change which
    samples, not what they are samples of)."""
    dc = cfg.distill
    # the gold answers too: which traces are kept depends on them
    questions = hashlib.sha256("\n".join(f"{p['question']}\t{p['answer']}" for p in problems).encode()).hexdigest()[:16]
    stamps = []  # of the teacher's weight files: one trained on in place (same folder, new weights) differs
    for name in sorted(f for f in os.listdir(dc.teacher) if f.startswith("model") and ".safetensors" in f):
        st = os.stat(os.path.join(dc.teacher, name))
        stamps.append((name, st.st_size, st.st_mtime_ns))
    return {"teacher": os.path.realpath(dc.teacher),
            "teacher_weights": hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:16],
            "samples_per_prompt": dc.samples_per_prompt,
            "max_new_tokens": dc.max_new_tokens, "sample_temperature": dc.sample_temperature,
            "reward_threshold": dc.reward_threshold, "dedup_traces": dc.dedup_traces, "template": cfg.data.template,
            "problems": f"{len(problems)} questions and answers, sha256 {questions}"}


def logit_matching_loss(teacher, dc):
    """loss_fn for train_loop: distill.distill_objective against the teacher's logits on the same tokens. Models
    whose embeddings are padded differently past the shared tokenizer are compared over their common rows."""
    def loss_fn(model, x, y, mask):
        with torch.no_grad():
            t_logits = teacher(x)  # (B, T, Vt), no gradient reaches the teacher
        s_logits = model(x)  # (B, T, Vs)
        V = min(s_logits.shape[-1], t_logits.shape[-1])  # >= the tokenizer's vocabulary (run_distill checks)
        return distill.distill_objective(s_logits[..., :V], t_logits[..., :V], y, mask, dc)
    return loss_fn


def teacher_sample_batches(cfg, teacher, tok, prompts, device):
    """batch_fn of fresh teacher completions to batch_size random prompts (token ids), a pure function of the step."""
    dc = cfg.distill

    def batch_fn(step, micro):
        idx = torch.randint(len(prompts), (cfg.train.batch_size,), generator=step_generator(cfg.train.seed, step, micro))
        gen = step_generator(cfg.train.seed, step, micro, device, stream=1)  # sampling, apart from the picks
        with autocast(device, cfg.train.bf16):
            comps = teacher.generate([prompts[i] for i in idx.tolist()], dc.max_new_tokens, dc.sample_temperature,
                                     eos_id=tok.stop_ids, generator=gen)
        return D.sft_batch([(prompts[i], c) for i, c in zip(idx.tolist(), tokens_only(comps, tok))], tok.pad_id)
    return batch_fn


def tokens_only(completions, tok):
    """Each teacher completion up to its first id past the tokenizer's vocabulary: a teacher with padded embeddings
    (Qwen's) can sample a padding row, which is no token and which a student with fewer rows cannot embed."""
    return [c[: next((j for j, t in enumerate(c) if t >= tok.vocab_size), len(c))] for c in completions]


def run_distill(cfg):
    """Distil the [distill].teacher checkpoint into the student (a fresh [model] or --init), either by logit
    matching on sequences or by SFT on the teacher's reward-filtered traces (DeepSeek-R1's recipe)."""
    dc = cfg.distill
    check_inputs(cfg)
    E.check_checkpoint(dc.teacher)
    if dc.mode not in ("logits", "traces") or dc.source not in ("teacher", "dataset"):
        raise ValueError(f"[distill].mode {dc.mode!r} / source {dc.source!r}: valid modes logits, traces; "
                         "sources teacher, dataset")
    if not cfg.init and not cfg.data.tokenizer:
        cfg.data.tokenizer = dc.teacher  # a student from scratch takes the teacher's tokenizer
    teacher_cfg = ModelConfig.load_hf(dc.teacher)
    teacher_vocab = teacher_cfg.vocab_size  # a student from scratch takes the teacher's (Qwen pads past the tokenizer)
    run = start_run(cfg, teacher_vocab)
    if run is None:
        return
    device, tok = run.device, run.tok
    if not same_tokenizer(tok, D.load_tokenizer(dc.teacher)):
        raise ValueError(f"student tokenizer ({cfg.init or cfg.data.tokenizer}) differs from the teacher's "
                         f"({dc.teacher}): logits and traces are only comparable over one vocabulary")
    for name, v in (("student", run.model.cfg.vocab_size), ("teacher", teacher_vocab)):
        if v < tok.vocab_size:
            raise ValueError(f"the {name} has {v} embedding rows, fewer than its tokenizer's {tok.vocab_size} tokens")
    if dc.top_k > min(run.model.cfg.vocab_size, teacher_vocab):
        raise ValueError(f"[distill].top_k = {dc.top_k}: more than the {min(run.model.cfg.vocab_size, teacher_vocab)} "
                         "logits the teacher and student share")
    sampled = dc.mode == "traces" or dc.source == "teacher"  # the student trains on prompt + teacher sample
    if sampled:
        prompts = E.encode_prompts(tok, run.train, cfg.data.template)  # encoded once, for the check and the teacher
        check_fits(run.model, prompts, dc.max_new_tokens, "training")
        T = max(map(len, prompts)) + dc.max_new_tokens  # the longest row
    else:  # the dataset's worked solutions
        pairs, T = sft_pairs(cfg, run, "distill")
    if T > teacher_cfg.max_seq_len:  # the teacher reads (and samples) every row the student trains on
        what = "a prompt plus distill.max_new_tokens" if sampled else "a worked solution's row (data.seq_len)"
        raise ValueError(f"the longest distillation row, {what}, is {T} tokens: more than the teacher's "
                         f"max_seq_len {teacher_cfg.max_seq_len}")
    teacher = Transformer.from_pretrained(dc.teacher, dtype=torch.float32).to(device).eval().requires_grad_(False)
    # the teacher samples eval_batch_size (traces) or batch_size (each step) rows at a time
    rows = cfg.train.eval_batch_size if dc.mode == "traces" else cfg.train.batch_size
    kv = [(teacher.cfg, rows, T)] if sampled else []
    loss_logits = 0 if dc.mode == "traces" else 11 if dc.kind == "jsd" else 7  # memory.py: the divergence's tensors
    report_memory(cfg, run, cfg.train.batch_size * T, teacher, kv_caches=kv, loss_logits=loss_logits)
    if dc.mode == "traces":  # SFT on what the teacher got right (sampled by rank 0, read by the others)
        with dist.rank0_first():
            traces = teacher_traces(cfg, teacher, tok, run.train, prompts, device)
        batch_fn, loss_fn = sft_batches(traces, cfg, tok), None
    elif dc.source == "dataset":  # logit matching on the dataset's worked solutions
        batch_fn = sft_batches(pairs, cfg, tok)
        loss_fn = logit_matching_loss(teacher, dc)
    else:  # logit matching on fresh teacher samples
        batch_fn = teacher_sample_batches(cfg, teacher, tok, prompts, device)
        loss_fn = logit_matching_loss(teacher, dc)
    train_loop(cfg, run, batch_fn, loss_fn)


RUNNERS = {"pretrain": run_pretrain, "sft": run_sft, "grpo": run_grpo, "distill": run_distill,
           "pipeline": lambda cfg: pipeline.run_pipeline(cfg, RUNNERS, dist.is_main())}


def check_config(cfg):
    """Every section's settings, checked before anything loads or trains; a bad one is a ValueError naming it
    (the model's shapes are checked as the config is read), and those that depend on torchrun's WORLD_SIZE."""
    for section in (cfg.train, cfg.data, cfg.grpo, cfg.distill, cfg.reward):
        section.check()
    if cfg.stage == "grpo" and cfg.reward.format_weight and cfg.data.template != "r1":
        raise ValueError(f"[reward].format_weight = {cfg.reward.format_weight} with [data].template = "
                         f"{cfg.data.template!r}: "
                         "the format reward pays R1-Zero's <think>..</think><answer>..</answer>, which only the r1 "
                         "template asks for; set format_weight = 0 or template = \"r1\"")
    dc = cfg.distill
    if cfg.stage == "distill" and dc.mode == "traces" and dc.samples_per_prompt > 1 and dc.sample_temperature == 0:
        raise ValueError(f"[distill].samples_per_prompt = {dc.samples_per_prompt} with sample_temperature = 0: greedy "
                         "sampling gives the same trace each time; set samples_per_prompt = 1 or a temperature > 0")
    unused = []  # settings this stage never reads, set away from their defaults: said, not silently dropped
    if cfg.stage == "distill" and dc.mode == "traces":
        unused += [f"[distill].{k} (mode = \"logits\" only)" for k in ("source", "temperature", "kind", "jsd_beta",
                                                                     "top_k", "ce_weight")
                   if getattr(dc, k) != getattr(DistillConfig(), k)]
    if cfg.stage == "grpo" and cfg.grpo.beta == 0 and cfg.grpo.ref_update_every:
        unused.append("[grpo].ref_update_every (beta = 0: there is no reference model)")
    if cfg.stage == "grpo" and cfg.train.grad_accum != 1:
        unused.append("[train].grad_accum (grpo: a step's gradient accumulates over micro-batches of "
                      "grpo.micro_batch_size sequences)")
    if unused and dist.is_main():
        print(f"note: not used by this run: {', '.join(unused)}")
    check_world(cfg, int(os.environ.get("WORLD_SIZE", 1)))
    check_inputs(cfg)


def check_inputs(cfg):
    """The checkpoints a stage cannot start without: grpo's init, distill's teacher (check_config, and each stage
    itself when called directly)."""
    if cfg.stage == "grpo" and not cfg.init:
        raise ValueError("the grpo stage starts from a checkpoint: set init = \"DIR\" or pass --init DIR")
    if cfg.stage == "distill" and not cfg.distill.teacher:
        raise ValueError("the distill stage needs [distill].teacher = \"TEACHER_CHECKPOINT_DIR\"")


def check_world(cfg, W):
    """The settings that must divide among W ranks: a grpo step's prompts (in rollout chunks, the same number on
    each rank), another stage's micro-batches (train.grad_accum)."""
    tc, gc = cfg.train, cfg.grpo
    if cfg.stage == "grpo":
        if not gc.rollout_prompts and tc.batch_size % W:
            raise ValueError(f"train.batch_size={tc.batch_size} prompts over {W} ranks: each rank needs the same "
                             f"number of prompts; use a multiple of {W}, or set grpo.rollout_prompts")
        C = gc.rollout_prompts or tc.batch_size // W  # prompts per rollout chunk
        if tc.batch_size % C or (tc.batch_size // C) % W:
            raise ValueError(f"train.batch_size={tc.batch_size} prompts must split into rollout chunks of "
                             f"grpo.rollout_prompts={C}, the same number of chunks on each of the {W} ranks")
    elif cfg.stage in ("pretrain", "sft", "distill") and tc.grad_accum % W:
        raise ValueError(f"train.grad_accum={tc.grad_accum} must be a multiple of the {W} ranks: the global batch "
                         f"is batch_size x grad_accum sequences, grad_accum / {W} micro-batches per rank")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip() + "\n\nEvery key, its default and what it does: the dataclasses at the top of "
              "train.py, data.py, grpo.py, distill.py and model.py, and the commented configs/*.toml.")
        return None
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config" or arg.startswith("--config="):
            path = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else None)
            if not path:
                raise ValueError("--config needs a TOML file: --config configs/NAME.toml")
            del argv[i: i + (1 if "=" in arg else 2)]
            break
    cfg = load_config(path, argv)
    if not cfg.out_dir.strip():
        raise ValueError("out_dir is empty: name the folder for the run's checkpoints and logs")
    if cfg.stage not in RUNNERS:
        raise ValueError(f"unknown stage {cfg.stage!r}; valid: {sorted(RUNNERS)}")
    if cfg.stage == "pipeline":  # every step's settings, before the first one trains
        pipeline.check_steps(cfg, RUNNERS, check_config)
    elif cfg.pipeline:
        raise ValueError(f"[pipeline] settings ({', '.join(sorted(cfg.pipeline))}) only apply with stage = "
                         f"\"pipeline\"; this run's stage is {cfg.stage!r}, which would ignore them")
    else:
        check_config(cfg)
    device = dist.setup(resolve_device(cfg.train.device))  # under torchrun: join the process group before any stage
    dist.check_same_config(dataclasses.asdict(cfg))
    RUNNERS[cfg.stage](cfg)
    if device.type == "cuda" and cfg.stage != "pipeline" and dist.is_main():
        print(peak_memory_line(device))
    return cfg


def peak_memory_line(device):
    """What this process held at most on the GPU, beside the memory plan printed at the start."""
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    return (f"peak CUDA memory: {gib(torch.cuda.max_memory_allocated(device))} allocated, "
            f"{gib(torch.cuda.max_memory_reserved(device))} reserved by the caching allocator")


if __name__ == "__main__":
    main()
