"""bench.py runs end to end on a tiny model (no timing assertions: speed targets live in the issues)."""
import contextlib
import re

import pytest
import torch

import bench
from model import ModelConfig, Transformer


TINY = ["--dim", "32", "--n_layers", "1", "--n_heads", "2", "--n_kv_heads", "1", "--hidden_dim", "48",
        "--vocab_size", "64", "--threads", "1"]  # bench.py's flags for a tiny model at one thread


def tiny_model():
    return Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64,
                                   max_seq_len=32))


def test_bench_prints_train_sample_and_grpo(capsys):
    n = torch.get_num_threads()
    try:
        bench.main([*TINY, "--seq", "16", "--steps", "1", "--gen-new", "4",
                    "--gen-reps", "1", "--grpo-reps", "1", "--warmup", "1"])
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert float(re.search(r"train  b8x16: (\d+) tok/s, MFU ([\d.]+)%", out).group(1)) > 0
    assert float(re.search(r"sample 16x4 .*: (\d+) new tok/s", out).group(1)) > 0
    sec, roll, upd = map(float, re.search(r"grpo .*: ([\d.]+) s/step \(last step: rollout ([\d.]+) s, update ([\d.]+) s",
                                          out).groups())
    assert sec > 0 and roll > 0 and upd > 0


@pytest.mark.parametrize("args,flag", [(["--steps", "0"], "--steps"), (["--grpo-reps", "0"], "--grpo-reps"),
                                       (["--threads", "0"], "--threads"), (["--gen-batch", "0"], "--gen-batch"),
                                       (["--seq", "0"], "--seq"), (["--dim", "0"], "--dim"),
                                       (["--n_layers", "0"], "--n_layers"), (["--vocab_size", "0"], "--vocab_size"),
                                       (["--warmup", "-1"], "--warmup"),
                                       (["--prompt-len", "40", "20"], "--prompt-len")])
def test_bad_flags_are_named(args, flag, capsys):
    with pytest.raises(SystemExit):
        bench.main(args)
    assert flag + " " in capsys.readouterr().err.splitlines()[-1]  # the error line itself, not the usage above it


def test_warmup_applies_to_every_measurement(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "timed", lambda fn, device, reps, warmup, **kw: calls.append(warmup) or 1.0)
    monkeypatch.setattr(bench, "matmul_peak", lambda *a: 1e9)
    monkeypatch.setattr(bench, "bench_grpo", lambda *a, warmup, **kw: (calls.append(warmup), (1.0, 0.5, 0.5))[1])
    n = torch.get_num_threads()
    try:
        bench.main([*TINY, "--warmup", "0"])
    finally:
        torch.set_num_threads(n)
    assert calls == [0, 0, 0]  # training, sampling and the GRPO step


def test_ab_speed_loads_the_named_revision_beside_the_files_on_disk(capsys):
    """scripts/ab_speed.py: the old side is git's copy of the revision (not the module already imported), both
    sides run in one process, and it reports a ratio for each kind of work."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "scripts"))
    import ab_speed
    old_model, old_grpo = ab_speed.load_version("HEAD", "test_old")
    new_model, _ = ab_speed.load_version(None, "test_new")
    head = subprocess.run(["git", "-C", root, "show", "HEAD:model.py"], check=True, capture_output=True).stdout
    with open(old_model.__file__, "rb") as f:
        assert f.read() == head and not old_model.__file__.startswith(root)
    assert new_model.__file__ == os.path.join(root, "model.py") and old_model is not new_model
    assert old_model.Transformer is not new_model.Transformer
    n = torch.get_num_threads()
    try:
        for what in ("generate", "train"):
            ratio = ab_speed.main(["--old", "HEAD", "--what", what, "--reps", "1", "--batch", "2",
                                   "--new-tokens", "4", "--threads", "1"])
            assert ratio > 0
        # more new tokens than the default 512-token context holds beside a 40-token prompt
        assert ab_speed.main(["--old", "HEAD", "--what", "generate", "--reps", "1", "--batch", "1",
                              "--new-tokens", "500", "--threads", "1"]) > 0
    finally:
        torch.set_num_threads(n)
    assert capsys.readouterr().out.count("ratio old/new") == 3


def test_bench_arithmetic(monkeypatch, capsys):
    """tokens/s, the matmul peak and MFU from fixed timings: matmul 1e6 s (10 reps), training 1 s (1 rep: --steps),
    sampling 0.5 s (2 reps: --gen-reps)."""
    monkeypatch.setattr(bench, "timed", lambda fn, device, reps, warmup, **kw: {10: 1e6, 1: 1.0, 2: 0.5}[reps])
    monkeypatch.setattr(bench, "bench_grpo", lambda *a, **k: (1.0, 0.5, 0.5))
    n = torch.get_num_threads()
    dims = dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=48, vocab_size=64)
    try:
        bench.main([x for k, v in dims.items() for x in (f"--{k}", str(v))] +
                   ["--threads", "1", "--batch", "4", "--seq", "16", "--steps", "1", "--gen-batch", "3",
                    "--gen-new", "5", "--gen-reps", "2", "--skip", "grpo"])
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    peak = 2 * 2048 ** 3 / 1e6  # FLOP/s: an n^3 matmul is 2 n^3 FLOPs
    assert float(re.search(r"matmul peak ([\d.]+) GFLOP/s", out).group(1)) == pytest.approx(peak / 1e9, abs=0.05)
    tok_s, mfu = re.search(r"train  b4x16: (\d+) tok/s, MFU ([\d.]+)%", out).groups()
    assert int(tok_s) == 4 * 16  # 64 tokens in 1 s
    fpt = Transformer(ModelConfig(**dims, max_seq_len=256)).flops_per_token(16)
    assert float(mfu) == pytest.approx(100 * 64 * fpt / peak, abs=0.06)
    assert int(re.search(r"sample 3x5 .*: (\d+) new tok/s", out).group(1)) == 3 * 5 / 0.5


def test_matmul_peak_is_the_fastest_call(monkeypatch):
    """The peak is a ceiling: the fastest of the timed calls (2, 1 and 3 s here), not their median (2 s)."""
    clock = iter([0.0, 2.0, 10.0, 11.0, 20.0, 23.0])  # start and end of each timed call (warmup is not timed)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    assert bench.matmul_peak(torch.device("cpu"), torch.float32, 8, reps=3) == 2 * 8 ** 3 / 1.0


def test_take_turns_alternates_who_goes_first():
    """bench.take_turns (used by scripts/ab_speed.py and scripts/bench_vs_hf.py): each runner warmed up, then one
    call each per turn, the first of each turn alternating, so a machine's drift falls on both sides alike."""
    calls = []
    times = bench.take_turns({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"),
                             reps=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3} and all(t >= 0 for v in times.values() for t in v)


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    """bench.train_step is a real step: repeated on one batch, the next-token loss falls."""
    torch.manual_seed(0)
    m = tiny_model()
    data = torch.randint(0, 64, (4, 17))
    loss = lambda: torch.nn.functional.cross_entropy(m(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten()).item()
    before, step = loss(), bench.train_step(m, data, contextlib.nullcontext())
    for _ in range(60):  # lr 1e-4: 20 steps gave 0.08
        step()
    assert loss() < before - 0.15


def test_train_step_runs_the_given_forward_even_when_it_is_falsy():
    """bench.train_step(fwd=...) runs fwd (bench.py --compile, scripts/bench_vs_hf.py's transformers forward). A
    torch.compile'd module raises on bool(): `fwd or model` failed there. A module whose len() is 0 is falsy and was
    silently replaced by the model."""
    torch.manual_seed(0)
    m = tiny_model()
    calls = []

    class Falsy(torch.nn.Module):
        def __len__(self):
            return 0

        def forward(self, x):
            calls.append(tuple(x.shape))
            return m(x)

    bench.train_step(m, torch.randint(0, 64, (2, 9)), contextlib.nullcontext(), fwd=Falsy())()
    assert calls == [(2, 8)]


def test_compile_flag_times_the_compiled_forward(monkeypatch, capsys):
    """bench.py --compile: the training measurement runs torch.compile(model)'s forward (here a recording stand-in,
    so the test compiles nothing); without the flag, the model itself."""
    compiled = []

    def fake_compile(model):
        def fwd(x):
            compiled.append(tuple(x.shape))
            return model(x)
        return fwd

    monkeypatch.setattr(bench.torch, "compile", fake_compile)
    monkeypatch.setattr(bench, "matmul_peak", lambda *a: 1e9)
    args = [*TINY, "--seq", "16", "--steps", "2", "--warmup", "1",
            "--skip", "sample", "grpo"]
    n = torch.get_num_threads()
    try:
        bench.main(args)
        assert compiled == [] and "train  b8x16: " in capsys.readouterr().out
        bench.main(args + ["--compile"])
    finally:
        torch.set_num_threads(n)
    assert compiled == [(8, 16)] * 3  # the warmup step and the two timed ones
    assert "train  b8x16 (torch.compile): " in capsys.readouterr().out


def _fake_timings(monkeypatch, grpo_calls=None):
    """bench.main with every measurement faked: nothing is timed, the GRPO step's arguments are recorded."""
    monkeypatch.setattr(bench, "timed", lambda fn, device, reps, warmup, **kw: 1.0)
    monkeypatch.setattr(bench, "matmul_peak", lambda *a: 1e9)
    calls = [] if grpo_calls is None else grpo_calls
    monkeypatch.setattr(bench, "bench_grpo", lambda *a, **kw: (calls.append(kw), (1.0, 0.25, 0.75))[1])


@pytest.mark.parametrize("device", ["meta", "foo", "cuda"])
def test_bad_device_is_a_flag_error(device, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is here: --device cuda is valid")
    with pytest.raises(SystemExit):
        bench.main(["--device", device])
    assert "--device " in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("args,flag", [(["--batch", "0"], "--batch"), (["--gen-new", "0"], "--gen-new"),
                                       (["--gen-reps", "0"], "--gen-reps"), (["--n_heads", "0"], "--n_heads"),
                                       (["--n_kv_heads", "0"], "--n_kv_heads"), (["--hidden_dim", "0"], "--hidden_dim"),
                                       (["--prompt-len", "0", "5"], "--prompt-len")])
def test_every_count_flag_is_checked(args, flag, capsys):
    with pytest.raises(SystemExit):
        bench.main(args)
    assert flag + " " in capsys.readouterr().err.splitlines()[-1]


def test_threads_flag_sets_torchs_threads(monkeypatch, capsys):
    _fake_timings(monkeypatch)
    n = torch.get_num_threads()
    want = 3 if n != 3 else 2
    try:
        bench.main([*TINY[:-2], "--threads", str(want), "--skip", "sample", "grpo"])
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(n)
    assert f"cpu, {want} threads" in capsys.readouterr().out


def test_the_model_context_holds_every_measurement(monkeypatch):
    """max_seq_len covers the training rows, the longest prompt plus its new tokens, and the GRPO shape (30 + 64)."""
    _fake_timings(monkeypatch)
    seen = []

    class Recording(bench.Transformer):
        def __init__(self, cfg):
            seen.append(cfg.max_seq_len)
            super().__init__(cfg)

    monkeypatch.setattr(bench, "Transformer", Recording)
    n = torch.get_num_threads()
    try:
        bench.main([*TINY, "--seq", "16", "--gen-new", "100", "--prompt-len", "20", "40"])
        bench.main([*TINY, "--seq", "16", "--gen-new", "4", "--prompt-len", "20", "40"])
        bench.main([*TINY, "--seq", "120", "--gen-new", "4"])
    finally:
        torch.set_num_threads(n)
    assert seen == [140, 94, 120]


def test_grpo_measurement_takes_its_own_reps_and_skip(monkeypatch, capsys):
    calls = []
    _fake_timings(monkeypatch, calls)
    n = torch.get_num_threads()
    try:
        bench.main([*TINY, "--grpo-reps", "3", "--gen-reps", "2", "--steps", "5", "--warmup", "0", "--skip", "sample"])
        out = capsys.readouterr().out
        assert calls == [dict(n_prompts=4, group=8, new=64, lo=16, hi=30, reps=3, warmup=0)]
        assert "grpo   4 prompts x 8 samples x 64" in out and "sample " not in out
        assert "(last step: rollout 0.25 s, update 0.75 s)" in out
        bench.main([*TINY, "--skip", "grpo"])
        assert len(calls) == 1 and "sample 16x128" in capsys.readouterr().out
    finally:
        torch.set_num_threads(n)


def test_bench_grpo_runs_a_beta_0_04_step_against_a_frozen_copy(monkeypatch):
    """The GRPO measurement is grpo_step with the documented config (beta 0.04: the reference forward is timed), a
    frozen copy as the reference, random prompts in [lo, hi]; it reports the last step's rollout / update split."""
    seen = []

    def fake_step(model, ref, opt, prompts, reward, cfg):
        seen.append((model, ref, prompts, cfg))
        return {"rollout_s": 1.0, "update_s": 2.0}

    monkeypatch.setattr(bench, "grpo_step", fake_step)
    m = tiny_model()
    sec, roll, upd = bench.bench_grpo(m, m.cfg, torch.device("cpu"), contextlib.nullcontext(), n_prompts=4, group=8,
                                      new=64, lo=16, hi=30, reps=2, warmup=1)
    assert (roll, upd) == (1.0, 2.0) and sec >= 0 and len(seen) == 3
    model, ref, prompts, cfg = seen[-1]
    assert (cfg.group_size, cfg.max_new_tokens, cfg.beta, cfg.clip_eps) == (8, 64, 0.04, 0.2)
    assert model is m and ref is not m and not any(p.requires_grad for p in ref.parameters())
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), m.state_dict().values()))
    assert len(prompts) == 4 and all(16 <= len(p) <= 30 for p in prompts)


def test_sampling_prompts_are_ragged(monkeypatch):
    m = tiny_model()
    seen = []
    monkeypatch.setattr(m, "generate", lambda prompts, **kw: seen.append((prompts, kw)))
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64, max_seq_len=32)
    bench.bench_sample(m, cfg, torch.device("cpu"), contextlib.nullcontext(), batch=16, new=4, lo=2, hi=9, reps=1,
                       warmup=0)
    (prompts, kw), = seen
    lengths = [len(p) for p in prompts]
    assert len(prompts) == 16 and min(lengths) >= 2 and max(lengths) <= 9 and len(set(lengths)) > 1
    assert all(0 <= t < 64 for p in prompts for t in p)
    assert kw["max_new_tokens"] == 4 and kw["eos_id"] is None  # no eos: every row runs to the end
