"""train.py's training loop, on a tiny model with SGD at lr 1 (the weight change is the gradient): gradient
accumulation, clipping, what each logged row holds; and check_world's division of work over ranks."""
import copy
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import train as T
from model import ModelConfig, Transformer

MCFG = ModelConfig(vocab_size=16, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32, max_seq_len=16)
# two micro-batches with different numbers of masked-in tokens: a token-weighted mean differs from the mean of means
X = [torch.tensor([[1, 2, 3, 4, 5, 6]]), torch.tensor([[7, 8, 9, 10, 11, 12]])]
Y = [torch.tensor([[2, 3, 4, 5, 6, 7]]), torch.tensor([[8, 9, 10, 11, 12, 13]])]
MASK = [torch.tensor([[0., 0, 0, 0, 1, 1]]), torch.tensor([[1., 1, 1, 1, 1, 0]])]


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def time(self):  # each call advances 1 s
        self.t += 1.0
        return self.t


def _loop(tmp_path, monkeypatch, max_steps=1, loss_fn=None, **train):
    """train_loop on a tiny model with SGD (lr 1, no momentum): the weight change is -(clipped) gradient."""
    torch.manual_seed(0)
    model = Transformer(MCFG)
    before = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    cfg = T.Config(stage="sft", out_dir=str(tmp_path))
    train = {"warmup_steps": 0, "min_lr_frac": 1.0, "log_every": 1, **train}
    cfg.train = T.TrainConfig(max_steps=max_steps, grad_accum=2, lr=1.0, eval_n=0, save_every=1000, **train)
    run = T.Run(torch.device("cpu"), None, model, opt, 0, {}, [], [])
    monkeypatch.setattr(T, "save_on_schedule", lambda *a, **k: None)
    clock = FakeClock()
    monkeypatch.setattr(T, "time", clock)
    T.train_loop(cfg, run, lambda step, micro: (X[micro], Y[micro], MASK[micro]), loss_fn)
    rows = [json.loads(r) for r in open(os.path.join(tmp_path, "metrics.jsonl"))]
    return before, model, rows


def _reference_grad(model):
    """Gradient of the mean over micro-batches of each one's masked mean CE, by hand."""
    m = copy.deepcopy(model)
    losses = []
    for x, y, mask in zip(X, Y, MASK):
        ce = F.cross_entropy(m(x).float().flatten(0, 1), y.flatten(), reduction="none")
        losses.append((ce * mask.flatten()).sum() / mask.sum())
    total = sum(losses) / len(losses)
    total.backward()
    return [p.grad.clone() for p in m.parameters()], [l.item() for l in losses]


def test_train_loop_accumulates_the_mean_of_micro_batch_losses(tmp_path, monkeypatch):
    """grad_accum = 2: the update is the gradient of the mean of the two micro-batches' masked means, unclipped
    when grad_clip = 0; the logged loss is that mean, grad_norm its norm, tokens_per_s the masked-in tokens."""
    before, after, rows = _loop(tmp_path, monkeypatch, grad_clip=0.0)
    grads, losses = _reference_grad(before)
    for g, p0, p1 in zip(grads, before.parameters(), after.parameters()):
        torch.testing.assert_close(p0.detach() - p1.detach(), g, rtol=1e-4, atol=1e-6)
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    assert rows[-1]["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert rows[-1]["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert rows[-1]["tokens_per_s"] == pytest.approx(2 + 5)  # 7 masked-in tokens over the fake clock's 1 s


def test_train_loop_clips_to_grad_clip(tmp_path, monkeypatch):
    before, after, rows = _loop(tmp_path, monkeypatch, grad_clip=0.5)
    grads, _ = _reference_grad(before)
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    assert norm > 1.0  # so the clip really bites
    for g, p0, p1 in zip(grads, before.parameters(), after.parameters()):
        torch.testing.assert_close(p0.detach() - p1.detach(), g * (0.5 / norm), rtol=1e-3, atol=1e-6)
    assert rows[-1]["grad_norm"] == pytest.approx(norm, rel=1e-4)  # the norm before clipping


def test_train_loop_logs_on_schedule_and_the_last_step(tmp_path, monkeypatch):
    """log_every = 2 over 3 steps: rows at 2 and 3 (the last); lr is the step's own; tokens_per_s counts every
    step since the previous row; a loss_fn's stats are averaged over the micro-batches."""
    def loss_fn(fwd, x, y, mask):
        return T.lm_loss(fwd(x), y, mask), {"extra": float(mask.sum())}  # 2 and 5
    _, _, rows = _loop(tmp_path, monkeypatch, max_steps=3, log_every=2, loss_fn=loss_fn, grad_clip=1.0,
                       warmup_steps=1, min_lr_frac=0.1)
    assert [r["step"] for r in rows] == [2, 3]
    # warmup 1 then cosine over 2 steps to 0.1: the lr of step index 1 (row 2) is 1.0, of index 2 (row 3) 0.55
    assert [r["lr"] for r in rows] == [pytest.approx(1.0), pytest.approx(0.1 + 0.9 * 0.5)]
    assert rows[0]["extra"] == pytest.approx(3.5) and rows[1]["extra"] == pytest.approx(3.5)
    # clock: t0 = 1; row 1 at t = 2 (7 + 7 tokens over 1 s); t0 = 3; row 2 at t = 4 (7 tokens over 1 s)
    assert rows[0]["tokens_per_s"] == pytest.approx(14) and rows[1]["tokens_per_s"] == pytest.approx(7)


@pytest.mark.parametrize("stage, world, args, ok", [
    ("grpo", 2, dict(batch_size=4), True), ("grpo", 2, dict(batch_size=3), False),
    ("grpo", 2, dict(batch_size=6, rollout_prompts=3), True),    # 2 chunks of 3: one per rank
    ("grpo", 2, dict(batch_size=6, rollout_prompts=2), False),   # 3 chunks of 2: not the same on each rank
    ("grpo", 2, dict(batch_size=6, rollout_prompts=4), False),   # 6 prompts do not cut into chunks of 4
    ("sft", 2, dict(batch_size=3, grad_accum=4), True), ("sft", 2, dict(batch_size=4, grad_accum=3), False),
    ("distill", 4, dict(grad_accum=2), False), ("pretrain", 1, dict(grad_accum=3), True)])
def test_check_world_rules(stage, world, args, ok):
    cfg = T.Config(stage=stage)
    cfg.grpo.rollout_prompts = args.pop("rollout_prompts", 0)
    for k, v in args.items():
        setattr(cfg.train, k, v)
    if ok:
        T.check_world(cfg, world)
    else:
        with pytest.raises(ValueError):
            T.check_world(cfg, world)
