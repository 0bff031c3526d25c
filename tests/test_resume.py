"""A stage's run folder: step checkpoints, exact resume (also after SIGKILL), extending a finished run, and what a
crash, a damaged file or a non-finite number leaves behind (train.py with checkpoint.py)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import train as T
from test_train import ROOT, _read_metrics, tiny_toml  # noqa: F401 (tiny_toml: a fixture)


def test_keep_last_zero_keeps_no_step_checkpoint(tiny_toml, tmp_path):
    out = str(tmp_path / "k0")
    T.main(["--config", tiny_toml, "--out_dir", out, "--train.max_steps=4", "--train.save_every=1",
            "--train.keep_last=0", "--train.eval_n=0"])
    assert T.list_checkpoints(out) == [] and os.path.exists(os.path.join(out, "final", "model.safetensors"))


def test_resume_past_max_steps_is_an_error(tiny_toml, tmp_path):
    out = str(tmp_path / "r")
    T.main(["--config", tiny_toml, "--out_dir", out, "--train.max_steps=4", "--train.save_every=2",
            "--train.eval_n=0"])
    shutil.rmtree(os.path.join(out, "final"))  # as if the run had died after its step-2 checkpoint
    with pytest.raises(ValueError, match=r"at step 2, not before train.max_steps=2"):
        T.main(["--config", tiny_toml, "--out_dir", out, "--train.max_steps=2", "--train.resume=true"])


def test_a_damaged_train_state_is_named_and_an_earlier_checkpoint_resumes(tiny_toml, tmp_path, capsys):
    out = str(tmp_path / "d")
    run = ["--config", tiny_toml, "--out_dir", out, "--train.max_steps=4", "--train.save_every=1", "--train.eval_n=0"]
    T.main(run)
    shutil.rmtree(os.path.join(out, "final"))  # as if the run had died after its step-3 checkpoint
    state = os.path.join(out, "ckpt-0000003", "train_state.pt")
    with open(state, "r+b") as f:  # damaged on disk after it was written
        f.truncate(os.path.getsize(state) // 2)
    with pytest.raises(ValueError, match=r"ckpt-0000003.train_state\.pt cannot be read.*move .*ckpt-0000003 away"):
        T.main(run + ["--train.resume=true"])
    shutil.move(os.path.join(out, "ckpt-0000003"), str(tmp_path / "damaged"))  # as the message says
    capsys.readouterr()
    T.main(run + ["--train.resume=true"])
    assert "ckpt-0000002 at step 2" in capsys.readouterr().out
    assert torch.load(os.path.join(out, "final", "train_state.pt"), weights_only=False)["step"] == 4


def test_a_resume_with_a_changed_config_names_the_keys(tiny_toml, tmp_path, capsys):
    """The resumed run keeps the checkpoint's model and optimizer state: keys changed since the checkpoint was written
    are named; what the run fills in itself (an init's architecture, the vocabulary size) and an extension's higher
    max_steps are not."""
    pre, out = str(tmp_path / "pre"), str(tmp_path / "sft")
    T.main(["--config", tiny_toml, "--out_dir", pre, "--train.max_steps=2", "--train.eval_n=0"])
    for init in ([], ["--stage", "sft", f"--init={pre}/final"]):  # the model from [model], then from a checkpoint
        shutil.rmtree(out, ignore_errors=True)
        run = ["--config", tiny_toml, "--out_dir", out, "--train.max_steps=4", "--train.save_every=2",
               "--train.eval_n=0", *init]
        T.main(run)
        shutil.rmtree(os.path.join(out, "final"))  # as if the run had died after its step-2 checkpoint
        capsys.readouterr()
        T.main(run + ["--train.resume=true"])
        assert "warning" not in capsys.readouterr().out  # the same config: quiet
        T.main(run + ["--train.resume=true", "--train.max_steps=6"])  # extends `final`: announced, no warning
        assert "warning" not in capsys.readouterr().out
        shutil.rmtree(os.path.join(out, "final"))
        T.main(run + ["--train.resume=true", "--train.lr=0.01", "--model.dim=64"])  # from the step-2 checkpoint
        out_text = capsys.readouterr().out
        stage, keys = ("sft", "train.lr") if init else ("pretrain", "model.dim, train.lr")
        assert f"warning: {stage} resumes from {out}/ckpt-0000002" in out_text
        assert f"has changed since that checkpoint was written ({keys})" in out_text


def test_finished_run_extends_to_a_higher_max_steps(tiny_toml, tmp_path, capsys, monkeypatch):
    """--train.resume=true with a higher train.max_steps goes on from `final`; with a constant lr (no schedule to
    re-lay) the extended run equals one run straight to the new max_steps, bitwise. An extension that is killed
    resumes from its own newer step checkpoint, not from the old `final`."""
    flat = ["--config", tiny_toml, "--train.eval_n=0", "--train.warmup_steps=0", "--train.min_lr_frac=1.0",
            "--train.save_every=2"]
    ref, out = str(tmp_path / "ref"), str(tmp_path / "ext")
    T.main(flat + ["--out_dir", ref, "--train.max_steps=8"])
    T.main(flat + ["--out_dir", out, "--train.max_steps=4"])
    real_save = T.save_checkpoint

    def dies_at_final(folder, *a, **kw):
        if os.path.basename(folder) == "final":
            raise KeyboardInterrupt  # killed after the step-6 checkpoint of the extension, before its `final`
        return real_save(folder, *a, **kw)

    monkeypatch.setattr(T, "save_checkpoint", dies_at_final)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        T.main(flat + ["--out_dir", out, "--train.max_steps=8", "--train.resume=true"])
    assert f"from {os.path.join(out, 'final')} at step 4" in capsys.readouterr().out
    assert json.load(open(os.path.join(out, "final", "run_config.json")))["train"]["max_steps"] == 4
    monkeypatch.setattr(T, "save_checkpoint", real_save)
    T.main(flat + ["--out_dir", out, "--train.max_steps=8", "--train.resume=true"])
    assert f"from {os.path.join(out, 'ckpt-0000006')} at step 6" in capsys.readouterr().out
    a, b = (load_file(os.path.join(d, "final", "model.safetensors")) for d in (ref, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _read_metrics(out)] == list(range(1, 9))
    T.main(flat + ["--out_dir", out, "--train.max_steps=8", "--train.resume=true"])  # done: nothing changes
    assert "is done, nothing to resume" in capsys.readouterr().out


def test_a_final_without_its_config_is_not_a_finished_run(tiny_toml, tmp_path, capsys):
    out = str(tmp_path / "r")
    args = ["--config", tiny_toml, "--out_dir", out, "--train.max_steps=2", "--train.eval_n=0"]
    T.main(args)
    os.remove(os.path.join(out, "final", "config.json"))  # a `final` folder that is no checkpoint
    capsys.readouterr()
    T.main(args + ["--train.resume=true"])
    assert "is done" not in capsys.readouterr().out
    assert os.path.exists(os.path.join(out, "final", "config.json"))  # trained again, and written whole


def test_a_crash_between_the_two_renames_of_final_is_recovered(tiny_toml, tmp_path, monkeypatch, capsys):
    """Replacing `final` (an extension) renames final -> .old-final, then .tmp-final -> final. A crash between the
    two leaves no `final`; the next run puts the new, complete one in place instead of starting over."""
    flat = ["--config", tiny_toml, "--train.eval_n=0", "--train.save_every=100"]
    out = str(tmp_path / "x")
    T.main(flat + ["--out_dir", out, "--train.max_steps=2"])
    real = os.rename

    def crash(a, b):
        real(a, b)
        if os.path.basename(b) == ".old-final":
            raise KeyboardInterrupt  # the power cut, right after the first rename

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        T.main(flat + ["--out_dir", out, "--train.max_steps=4", "--train.resume=true"])
    monkeypatch.setattr(os, "rename", real)
    assert sorted(os.listdir(out)) == [".old-final", ".tmp-final", "metrics.jsonl", "samples.jsonl", "tokenizer.model",
                                       "tokenizer.vocab"]
    new = load_file(os.path.join(out, ".tmp-final", "model.safetensors"))
    capsys.readouterr()
    T.main(flat + ["--out_dir", out, "--train.max_steps=4", "--train.resume=true"])
    assert "is done, nothing to resume" in capsys.readouterr().out  # step 4 was not lost
    assert sorted(n for n in os.listdir(out) if n.startswith(".")) == []
    got = load_file(os.path.join(out, "final", "model.safetensors"))
    assert all(torch.equal(new[k], got[k]) for k in new)


def test_refuses_to_overwrite_and_finished_run_is_kept(tiny_toml, tmp_path):
    out = str(tmp_path / "run")
    T.main(["--config", tiny_toml, "--out_dir", out, "--train.max_steps=2", "--train.eval_n=0"])
    with pytest.raises(FileExistsError, match="final exists"):
        T.main(["--config", tiny_toml, "--out_dir", out, "--train.max_steps=2", "--train.eval_n=0"])
    before = load_file(os.path.join(out, "final", "model.safetensors"))
    T.main(["--config", tiny_toml, "--out_dir", out, "--train.max_steps=2", "--train.resume=true"])
    after = load_file(os.path.join(out, "final", "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_toml, tmp_path, monkeypatch):
    out = str(tmp_path / "nan")
    real = T.lm_loss
    calls = {"n": 0}

    def poisoned(logits, y, mask=None):
        calls["n"] += 1
        return real(logits, y, mask) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(T, "lm_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 3.*ckpt-0000002"):  # as numbered
        T.main(["--config", tiny_toml, "--out_dir", out, "--train.eval_n=0"])
    assert [os.path.basename(c) for c in T.list_checkpoints(out)] == ["ckpt-0000002"]
    assert not os.path.exists(os.path.join(out, "final"))


def test_an_update_that_overflows_is_never_saved(tiny_toml, tmp_path, monkeypatch):
    """The loss before step 4's update is finite, the update is not (an overflow): the step-4 checkpoint it would
    have written is refused, and the one before stays the last good checkpoint."""
    out = str(tmp_path / "inf")
    real = T.build_optimizer

    def overflowing(model, tcfg):
        opt = real(model, tcfg)
        step, calls = opt.step, {"n": 0}

        def poisoned_step(*a, **kw):
            calls["n"] += 1
            step(*a, **kw)
            if calls["n"] == 4:
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("inf")
        opt.step = poisoned_step
        return opt

    monkeypatch.setattr(T, "build_optimizer", overflowing)
    with pytest.raises(FloatingPointError, match=r"non-finite weights at step 4.*ckpt-0000002"):
        T.main(["--config", tiny_toml, "--out_dir", out, "--train.eval_n=0"])
    assert [os.path.basename(c) for c in T.list_checkpoints(out)] == ["ckpt-0000002"]


def test_resume_drops_a_metrics_row_cut_off_by_a_crash(tiny_toml, tmp_path):
    out = str(tmp_path / "cut")
    T.main(["--config", tiny_toml, "--out_dir", out, "--train.eval_n=0", "--train.max_steps=4"])
    shutil.rmtree(os.path.join(out, "final"))
    metrics = os.path.join(out, "metrics.jsonl")
    whole = open(metrics).read()
    with open(metrics, "w") as f:  # step 4's row cut off mid-write
        f.write(whole[: whole.rindex('{"step": 4') + 20])
    T.main(["--config", tiny_toml, "--out_dir", out, "--train.eval_n=0", "--train.max_steps=4", "--train.resume=true"])
    assert [json.loads(r)["step"] for r in open(metrics)] == [1, 2, 3, 4]
    with open(metrics, "w") as f:  # a broken row that is not the last is named, not guessed at
        f.write('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    shutil.rmtree(os.path.join(out, "final"))
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON row"):
        T.main(["--config", tiny_toml, "--out_dir", out, "--train.eval_n=0", "--train.max_steps=4",
                "--train.resume=true"])


def _run(args, **kw):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def test_sigkill_then_resume_matches_uninterrupted(tiny_toml, tmp_path):
    args = ["--config", tiny_toml, "--train.max_steps=60", "--train.save_every=5", "--train.eval_n=0",
            "--train.keep_last=100"]
    ref = str(tmp_path / "ref")
    assert _run(args + ["--out_dir", ref]).wait(timeout=300) == 0

    out = str(tmp_path / "killed")
    proc = _run(args + ["--out_dir", out])
    deadline = time.time() + 300
    while len(T.list_checkpoints(out)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "final")), "the run finished before it could be killed"
    assert len(T.list_checkpoints(out)) >= 2

    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        T.main(args + ["--out_dir", out])
    resumed = _run(args + ["--out_dir", out, "--train.resume=true"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    a = load_file(os.path.join(ref, "final", "model.safetensors"))
    b = load_file(os.path.join(out, "final", "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    steps = [r["step"] for r in _read_metrics(out)]
    assert steps == list(range(1, 61))  # no duplicated or missing rows after the resume
