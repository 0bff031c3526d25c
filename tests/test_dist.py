"""Several processes on CPU with gloo: 2 ranks land on the weights of 1 process with the same global batch (SFT,
GRPO, FSDP2), and a resumed 2-rank run lands on the uninterrupted one. The 2 ranks are spawned once with
torch.multiprocessing and run every scenario in one process group (the imports dominate the time)."""
import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import dist
import train as T

TINY = """
[model]
dim = 32
n_layers = 2
n_heads = 4
n_kv_heads = 2
hidden_dim = 64
max_seq_len = 128
[data]
families = "add"
levels = "1"
n_train = 200
n_test = 8
vocab_size = 384
seq_len = 64
[train]
device = "cpu"      # gloo ranks on CPU, also on a machine with fewer GPUs than ranks
batch_size = 3
grad_accum = 2
lr = 1e-3
warmup_steps = 1
log_every = 1
eval_every = 2
eval_n = 2
eval_batch_size = 2
max_new_tokens = 8
save_every = 2
"""

SFT = ["--stage", "sft", "--train.max_steps=3"]
GRPO = ["--stage", "grpo", "--train.max_steps=4", "--train.batch_size=4", "--train.eval_n=0", "--grpo.group_size=3",
        "--train.n_samples=5",
        "--grpo.max_new_tokens=6", "--grpo.agg=token-mean", "--grpo.micro_batch_size=4", "--grpo.rollout_prompts=1",
        "--grpo.skip_zero_std_groups=true"]


DISTILL = ["--stage", "distill", "--model.dim=16", "--model.n_heads=2", "--model.n_kv_heads=1", "--model.hidden_dim=32",
           "--train.max_steps=2", "--train.eval_n=0", "--distill.max_new_tokens=6", "--distill.mode=logits",
           "--distill.source=teacher"]


def odd_length_reward(text, gold):
    """A stand-in for accuracy that a tiny untrained model gets right about half the time: a real learning signal."""
    return float(len(text) % 2)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Interrupt(Exception):
    pass


def _worker(rank, world, port, jobs):
    """One rank: join the gloo group the way torchrun's environment would, then run each (argv, stop_after) job.
    stop_after = n raises after the n-th optimizer step (after its checkpoint, if any), like a killed job."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # the first train.main joins the gloo group (dist.setup) and later ones reuse it
    T.accuracy_reward = odd_length_reward
    real_save = T.save_on_schedule
    for argv, stop_after in jobs:
        def save(cfg, model, tok, opt, done, extra=None):
            real_save(cfg, model, tok, opt, done, extra)
            if done == stop_after:
                raise Interrupt
        T.save_on_schedule = save
        try:
            T.main(argv)
        except Interrupt:
            pass
    torch.distributed.destroy_process_group()


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(r) for r in f]


def _weights(out):
    return load_file(os.path.join(out, "final", "model.safetensors"))


def _spawn(fn, world, *args):
    """mp.spawn of `world` ranks fn(rank, world, *args) that never outlives its test: when the wait is cut short
    (conftest's TEST_TIMEOUT alarm), the ranks are killed, so a hung collective fails the test by name instead of
    keeping pytest from exiting. A rank that raises ends the wait with mp.ProcessRaisedException, as mp.spawn does."""
    ctx = mp.spawn(fn, args=(world, *args), nprocs=world, join=False)
    try:
        while not ctx.join():
            pass
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """1-process references in this process, then every 2-rank scenario in one spawn."""
    d = tmp_path_factory.mktemp("dist")
    (d / "tiny.toml").write_text(TINY)
    base = ["--config", str(d / "tiny.toml")]
    out = {k: str(d / k) for k in ("sft1", "sft2", "fsdp2", "fsdp_cut2", "ddp_then_fsdp2", "distill1", "distill2",
                                   "grpo1", "grpo2", "cut2")}
    T.main(base + SFT + ["--out_dir", out["sft1"]])
    init = os.path.join(out["sft1"], "final")
    distill = base + DISTILL + ["--distill.teacher", init]
    T.main(distill + ["--out_dir", out["distill1"]])
    real = T.accuracy_reward
    T.accuracy_reward = odd_length_reward
    try:
        T.main(base + GRPO + ["--init", init, "--out_dir", out["grpo1"]])
    finally:
        T.accuracy_reward = real
    jobs = [(base + SFT + ["--out_dir", out["sft2"]], None),
            (base + SFT + ["--out_dir", out["fsdp2"], "--train.fsdp=true"], None),
            (base + SFT + ["--out_dir", out["fsdp_cut2"], "--train.fsdp=true", "--train.save_every=1"], 1),  # killed
            (base + SFT + ["--out_dir", out["fsdp_cut2"], "--train.fsdp=true", "--train.save_every=1",
                           "--train.resume=true"], None),
            (base + SFT + ["--out_dir", out["ddp_then_fsdp2"], "--train.save_every=1"], 1),  # DDP, killed
            (base + SFT + ["--out_dir", out["ddp_then_fsdp2"], "--train.fsdp=true", "--train.save_every=1",
                           "--train.resume=true"], None),  # resumed sharded: the optimizer state keyed by position
            (distill + ["--out_dir", out["distill2"]], None),
            (base + GRPO + ["--init", init, "--out_dir", out["grpo2"]], None),
            (base + GRPO + ["--init", init, "--out_dir", out["cut2"]], 3),  # killed after step 3 (ckpt at 2)
            (base + GRPO + ["--init", init, "--out_dir", out["cut2"], "--train.resume=true"], None)]
    _spawn(_worker, 2, _free_port(), jobs)
    return out


def _assert_same_run(a, b, atol):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff < atol, f"max weight difference {diff}"
    ra, rb = _metrics(a), _metrics(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):  # the logged numbers are global: loss scale and gradient norm must agree too
        for k in ("loss", "grad_norm", "reward_mean", "accuracy_mean", "kl", "entropy", "completion_len",
                  "format_rate", "len_correct", "len_wrong"):
            if k in x:
                assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6, nan_ok=True), (k, x["step"], x[k], y[k])


def test_ddp_sft_equals_one_process(runs):
    _assert_same_run(runs["sft1"], runs["sft2"], atol=2e-6)
    assert all(math.isfinite(r["loss"]) for r in _metrics(runs["sft2"]))
    assert "eval/accuracy" in _metrics(runs["sft2"])[1]  # rank 0 evaluated


def test_fsdp2_sft_equals_one_process_and_saves_hf_layout(runs):
    _assert_same_run(runs["sft1"], runs["fsdp2"], atol=2e-6)
    w = _weights(runs["fsdp2"])
    assert "model.layers.0.self_attn.q_proj.weight" in w and w["model.embed_tokens.weight"].shape == (384, 32)


def test_fsdp2_resume_matches_uninterrupted(runs):
    # the step-1 checkpoint (gathered weights + full optimizer state) reloads into a sharded model and optimizer
    assert T.list_checkpoints(runs["fsdp_cut2"])
    _assert_same_run(runs["fsdp2"], runs["fsdp_cut2"], atol=1e-7)


def test_fsdp2_resumes_a_ddp_checkpoint(runs):
    """A DDP (or 1-process) checkpoint keys its optimizer state by position, FSDP2's by name: both resume."""
    assert T.list_checkpoints(runs["ddp_then_fsdp2"])
    _assert_same_run(runs["fsdp2"], runs["ddp_then_fsdp2"], atol=2e-6)


def test_ddp_distill_equals_one_process(runs):
    _assert_same_run(runs["distill1"], runs["distill2"], atol=2e-6)
    assert "distill" in _metrics(runs["distill2"])[0]


def test_ddp_grpo_equals_one_process(runs):
    _assert_same_run(runs["grpo1"], runs["grpo2"], atol=2e-6)
    samples = [[json.loads(line) for line in open(os.path.join(runs[k], "samples.jsonl"))] for k in ("grpo1", "grpo2")]
    assert len(samples[0]) > 4 and samples[0] == samples[1]  # the same completions, whichever rank sampled them
    rows = _metrics(runs["grpo2"])
    assert 0 < rows[0]["reward_mean"] < 1.5  # a real signal: the update is not all zeros


def test_resumed_two_rank_run_matches_uninterrupted(runs):
    a, b = _weights(runs["grpo2"]), _weights(runs["cut2"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _metrics(runs["cut2"])] == [1, 2, 3, 4]


def _different_lr_worker(rank, world, port, argv):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        T.main(argv + (["--train.lr=0.01", "--train.seed=5"] if rank == 1 else []))
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_started_with_different_settings_are_refused(tmp_path):
    """A rank whose config differs (a per-node config file, another checkout) would train on other settings and
    drift apart from rank 0 without an error: every rank refuses at startup, naming the keys."""
    (tmp_path / "tiny.toml").write_text(TINY)
    argv = ["--config", str(tmp_path / "tiny.toml"), *SFT, "--out_dir", str(tmp_path / "out")]
    with pytest.raises(mp.ProcessRaisedException,
                       match=r"rank 1 differs from rank 0 in train.lr \(0.001 vs 0.01\), train.seed \(0 vs 5\)"):
        _spawn(_different_lr_worker, 2, _free_port(), argv)
    assert not os.path.exists(tmp_path / "out" / "final")


def test_more_ranks_than_gpus_is_refused_by_name(monkeypatch):
    """Two ranks on a one-GPU node: the rank without a GPU says so, instead of torch's "invalid device ordinal"."""
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail(f"set_device({d}) on a missing GPU"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"train.device is cuda, but this node has no GPU .*--train.device=cpu"):
        dist.setup(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=r"LOCAL_RANK 1 needs a GPU of its own, but this node has 1: .*"
                                         r"--nproc_per_node 1.*--train.device=cpu"):
        dist.setup(torch.device("cuda"))
    seen = []
    monkeypatch.setattr(torch.cuda, "set_device", seen.append)
    monkeypatch.setattr(dist.dist, "is_initialized", lambda: True)  # the group exists: setup only picks the GPU
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert dist.setup(torch.device("cuda")) == torch.device("cuda", 0) and seen == [torch.device("cuda", 0)]


def test_check_same_config_names_a_key_only_one_rank_has(monkeypatch):
    """D4: a key that only rank 1's config has (a pipeline table) is named too."""
    configs = [{"train": {"lr": 0.1}, "pipeline": {}}, {"train": {"lr": 0.1}, "pipeline": {"sft": {"init": "x"}}}]
    monkeypatch.setattr(dist, "gather_objects", lambda text: [json.dumps(c, sort_keys=True) for c in configs])
    with pytest.raises(ValueError, match=r"rank 1 differs from rank 0 in pipeline.sft.init \(None vs 'x'\)"):
        dist.check_same_config(configs[0])
    monkeypatch.setattr(dist, "gather_objects", lambda text: [json.dumps(configs[0], sort_keys=True)] * 2)
    dist.check_same_config(configs[0])  # the same: quiet



def test_check_same_config_does_not_refuse_equal_values(monkeypatch):
    """A free-form table's 1 and 1.0 are the same setting once applied: not a difference between ranks."""
    a, b = {"pipeline": {"sft": {"train": {"lr": 1}}}}, {"pipeline": {"sft": {"train": {"lr": 1.0}}}}
    monkeypatch.setattr(dist, "gather_objects", lambda text: [json.dumps(a), json.dumps(b)])
    dist.check_same_config(a)
