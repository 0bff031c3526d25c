"""train.py's training loop, on a tiny model with SGD at lr 1 (the weight change is the gradient): gradient
accumulation, clipping, what each logged row holds; and check_world's division of work over ranks."""
import copy
import dataclasses
import json
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

import train as T
from model import ModelConfig, Transformer
from test_train import TINY, pretrained  # noqa: F401 (pretrained: a fixture)

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




def test_adamw_decays_matrices_only_with_the_configured_betas():
    """With zero gradients AdamW's step is decay alone: matrices shrink by lr * weight_decay, norms and
    biases stay; and the second moment after one step is (1 - beta2) g^2."""
    torch.manual_seed(0)
    m = Transformer(dataclasses.replace(MCFG, attn_bias=True))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(0.5)  # biases 0.5, norms 1.5: decay would show
    opt = T.build_optimizer(m, T.TrainConfig(lr=0.1, weight_decay=0.3, beta1=0.8, beta2=0.99))
    before = copy.deepcopy(m)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for (n, p0), p1 in zip(before.named_parameters(), m.parameters()):
        want = p0 * (1 - 0.1 * 0.3) if p0.dim() >= 2 else p0
        torch.testing.assert_close(p1, want, rtol=1e-6, atol=1e-7, msg=n)
    for p in m.parameters():
        p.grad = torch.full_like(p, 2.0)
    opt.step()
    for p in m.parameters():
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], torch.full_like(p, 0.01 * 4.0))
        torch.testing.assert_close(opt.state[p]["exp_avg"], torch.full_like(p, 0.2 * 2.0))


def _eval_loop(tmp_path, monkeypatch, **train):
    """train_loop for max_steps steps with a stand-in held-out evaluation that reports the step it ran at."""
    torch.manual_seed(0)
    model = Transformer(MCFG)
    cfg = T.Config(stage="sft", out_dir=str(tmp_path))
    cfg.train = T.TrainConfig(**{"warmup_steps": 0, "lr": 1e-3, "save_every": 1000, "grad_accum": 1, **train})
    run = T.Run(torch.device("cpu"), None, model, T.build_optimizer(model, cfg.train), 0, {}, [], ["a problem"])
    monkeypatch.setattr(T, "save_on_schedule", lambda *a, **k: None)
    monkeypatch.setattr(T, "evaluate_and_log", lambda model, tok, problems, cfg, device, step, log: {"eval/at": step})
    x = torch.tensor([[1, 2, 3, 4]])
    T.train_loop(cfg, run, lambda step, micro: (x, x.roll(-1, 1), None))
    return [json.loads(r) for r in open(os.path.join(tmp_path, "metrics.jsonl"))]


def test_evaluation_runs_on_cadence_and_after_the_last_step_and_is_always_logged(tmp_path, monkeypatch):
    """eval_every=2 over 3 steps evaluates at 2 and at the last step 3; log_every=10 would log neither
    step, but a row that holds an evaluation is always written."""
    rows = _eval_loop(tmp_path, monkeypatch, max_steps=3, eval_every=2, eval_n=1, log_every=10)
    assert [(r["step"], r.get("eval/at")) for r in rows] == [(2, 2), (3, 3)]


def test_evaluate_and_log_writes_only_n_samples(monkeypatch):
    """samples.jsonl gets the first train.n_samples of the evaluation's samples."""
    cfg = T.Config()
    cfg.train.n_samples = 2
    monkeypatch.setattr(T.E, "greedy_eval", lambda *a, **k: ({"accuracy": 0.5}, [{"i": i} for i in range(5)]))
    logged = []
    log = type("Log", (), {"log_samples": lambda self, step, s: logged.append((step, s))})()
    m = Transformer(MCFG)
    assert T.evaluate_and_log(m, None, ["p"], cfg, torch.device("cpu"), 7, log) == {"eval/accuracy": 0.5}
    assert logged == [(7, [{"i": 0}, {"i": 1}])]
    assert m.training


def test_step_generator_keeps_the_linear_seed_below_micro_97_and_separates_streams():
    """micro 0..96 of stream 0 keep the earlier versions' seed (the README demo numbers reproduce); past
    micro 97 the hashed seed still depends on the stream."""
    seed_of = lambda *a, **k: T.step_generator(*a, **k).initial_seed()  # noqa: E731
    for seed, step, micro in ((0, 0, 0), (3, 11, 50), (7, 2, 96)):
        assert seed_of(seed, step, micro) == (seed * 1_000_003 + step) * 97 + micro
    assert seed_of(0, 5, 100) != seed_of(0, 5, 100, stream=1)
    assert seed_of(0, 5, 100, stream=1) != seed_of(0, 5, 100, stream=2)


def test_boundary_settings_are_accepted_and_just_past_them_refused():
    """grad_clip 0 (no clipping), eval_every 0 (only at the end), the largest seed and a
    format-only reward are valid settings; beta2 = 1 is not."""
    T.TrainConfig(grad_clip=0.0, eval_every=0, seed=2**32 - 1, beta2=0.999).check()
    with pytest.raises(ValueError, match=r"beta2 = 1\.0"):
        T.TrainConfig(beta2=1.0).check()
    T.RewardConfig(accuracy_weight=0.0, format_weight=0.5).check()


def test_check_fits_allows_exactly_the_context():
    """prompt + new tokens == max_seq_len fits; one more does not."""
    m = Transformer(MCFG)
    T.check_fits(m, [[1] * 10, [2] * 4], 6, "training")
    with pytest.raises(ValueError, match="max_seq_len=16"):
        T.check_fits(m, [[1] * 10], 7, "training")


def test_activation_checkpointing_switch_reaches_the_model(tmp_path, monkeypatch):
    """train.activation_checkpointing=true makes the training forwards recompute each block."""
    (tmp_path / "t.toml").write_text(TINY)
    calls, real = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    T.main(["--config", str(tmp_path / "t.toml"), "--stage", "sft", "--train.max_steps=1", "--train.eval_n=0",
            "--train.activation_checkpointing=true", "--out_dir", str(tmp_path / "o")])
    assert len(calls) == 2  # one per block of the one step's forward


def test_init_run_records_the_checkpoints_architecture(pretrained, tmp_path):
    """With --init the run config records the init checkpoint's [model], not the config file's."""
    toml, init = pretrained
    out = tmp_path / "o"
    T.main(["--config", toml, "--stage", "sft", "--init", init, "--model.dim=64", "--train.max_steps=1",
            "--train.eval_n=0", "--out_dir", str(out)])
    with open(out / "final" / "run_config.json") as f:
        assert json.load(f)["model"]["dim"] == 32


@pytest.mark.parametrize("field, value, ok", [
    ("lr", 0.0, True), ("n_samples", 0, True),
    ("max_steps", 0, False), ("batch_size", 0, False), ("beta1", 1.0, False), ("seed", 2**32, False),
    ("device", "gpu", False)])
def test_train_settings_at_their_bounds(field, value, ok):
    """lr 0 and no logged samples are valid; no step, an empty batch, beta1 = 1, a seed numpy refuses and an unknown
    device are refused by name before anything loads."""
    tc = T.TrainConfig(**{field: value})
    if ok:
        tc.check()
    else:
        with pytest.raises(ValueError, match=rf"\[train\]\.{field} = "):
            tc.check()


def test_a_non_finite_stop_names_the_newest_checkpoint(tmp_path):
    for step in (2, 4):  # keep_last = 2: both still there
        os.makedirs(tmp_path / f"ckpt-{step:07d}")
        (tmp_path / f"ckpt-{step:07d}" / "train_state.pt").write_bytes(b"x")
    cfg = T.Config(out_dir=str(tmp_path))
    with pytest.raises(FloatingPointError, match=r"at step 5; .*Last good checkpoint: .*ckpt-0000004$"):
        T.stop_non_finite(cfg, "loss nan", 5)


def test_a_resumed_init_run_still_records_the_checkpoints_architecture(pretrained, tmp_path):
    """Resumed from its own step checkpoint, an --init run's final run_config.json records the architecture it
    trained (the init's dim 32), not the config file's [model]."""
    toml, init = pretrained
    out = tmp_path / "o"
    run = ["--config", toml, "--stage", "sft", "--init", init, "--model.dim=64", "--train.max_steps=2",
           "--train.save_every=1", "--train.eval_n=0", "--out_dir", str(out)]
    T.main(run)
    shutil.rmtree(out / "final")  # as if killed after the step-1 checkpoint
    T.main(run + ["--train.resume=true"])
    with open(out / "final" / "run_config.json") as f:
        assert json.load(f)["model"]["dim"] == 32


def test_pretrain_rows_are_cut_to_the_models_context(tmp_path):
    """data.seq_len longer than model.max_seq_len: the packed rows are cut to the model's context."""
    (tmp_path / "t.toml").write_text(TINY)
    T.main(["--config", str(tmp_path / "t.toml"), "--train.max_steps=1", "--train.eval_n=0",
            "--model.max_seq_len=32", "--data.seq_len=64", "--out_dir", str(tmp_path / "o")])
    assert os.path.exists(tmp_path / "o" / "final" / "model.safetensors")


def test_same_tokenizer_compares_the_eos_id():
    """Same vocabulary and encodings but another eos (a base model vs its chat tune): not the same tokenizer."""
    from types import SimpleNamespace
    enc = lambda text: [len(text)]  # noqa: E731
    a = SimpleNamespace(vocab_size=10, eos_id=2, encode=enc)
    assert T.same_tokenizer(a, SimpleNamespace(vocab_size=10, eos_id=2, encode=enc))
    assert not T.same_tokenizer(a, SimpleNamespace(vocab_size=10, eos_id=3, encode=enc))
