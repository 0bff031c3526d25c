"""checkpoint.py and the distill traces cache key: what a crash at a bad moment leaves behind."""
import json
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import checkpoint
import train as T


def _ckpt(out, step):
    folder = out / f"ckpt-{step:07d}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "train_state.pt").write_bytes(b"state")
    return str(folder)


def test_pruning_takes_train_state_first_and_clears_what_a_crash_left(tmp_path, monkeypatch):
    old, mid, new = (_ckpt(tmp_path, s) for s in (1, 2, 3))

    def killed(path, *a, **kw):  # the process dies as the first folder's files are being deleted
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.prune_checkpoints(str(tmp_path), keep_last=1)
    # neither old folder still counts as a checkpoint: a resume never starts from one that lost its weights
    assert checkpoint.list_checkpoints(str(tmp_path)) == [new]
    assert os.path.exists(os.path.join(old, "model.safetensors"))  # left behind by the crash...
    monkeypatch.undo()
    checkpoint.prune_checkpoints(str(tmp_path), keep_last=1)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-0000003"]  # ...and cleared at the next save
    checkpoint.prune_checkpoints(str(tmp_path), keep_last=0)
    assert os.listdir(tmp_path) == []
    assert not os.path.exists(mid)
    for name in (".tmp-ckpt-0000004", ".tmp-final"):  # a save killed half way; a final waiting for recover_final
        os.makedirs(tmp_path / name)
    checkpoint.prune_checkpoints(str(tmp_path), keep_last=1)
    assert os.listdir(tmp_path) == [".tmp-final"]


def test_a_damaged_run_config_is_named(tmp_path):
    folder = tmp_path / "final"
    os.makedirs(folder)
    (folder / "config.json").write_text("{}")
    (folder / "run_config.json").write_text('{"train": {"max_steps": 5}')
    with pytest.raises(ValueError, match=r"final/run_config.json is not valid JSON"):
        checkpoint.final_step(str(tmp_path))
    (folder / "run_config.json").write_text('{"train": {}}')
    with pytest.raises(ValueError, match=r"final/run_config.json: no integer train.max_steps \(got None\)"):
        checkpoint.final_step(str(tmp_path))
    (folder / "run_config.json").write_text('[1]')
    with pytest.raises(ValueError, match=r"final/run_config.json: expected a JSON object, got list"):
        checkpoint.read_run_config(str(folder))
    (folder / "run_config.json").write_text('{"train": {"max_steps": 5}}')
    assert checkpoint.final_step(str(tmp_path)) == 5


def test_a_crash_while_resuming_keeps_the_logged_rows(tmp_path, monkeypatch):
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 7)]
    for name in ("metrics.jsonl", "samples.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = (tmp_path / "metrics.jsonl").read_text()

    class Dying:  # a file whose writes never happen: the process is killed after opening it
        def __init__(self, path, mode="r", *a, **kw):
            self.f = open(path, mode, *a, **kw)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def readlines(self):
            return self.f.readlines()

        def writelines(self, lines):
            raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "open", Dying, raising=False)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.RunLog(str(tmp_path), start_step=4)
    assert (tmp_path / "metrics.jsonl").read_text() == before  # not emptied: the next resume still has them
    monkeypatch.undo()
    log = checkpoint.RunLog(str(tmp_path), start_step=4)
    log.close()
    assert [json.loads(r)["step"] for r in open(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_traces_cache_key_holds_the_gold_answers(tmp_path):
    # which traces are kept depends on the golds: corrected answers to the same questions must not reuse them
    cfg = T.load_config(None, [f"--distill.teacher={tmp_path}"])
    problems = [{"question": "Compute 2 + 3.", "answer": "5"}, {"question": "Compute 4 + 4.", "answer": "8"}]
    fixed = [problems[0], {**problems[1], "answer": "9"}]
    assert T.traces_settings(cfg, problems)["problems"] != T.traces_settings(cfg, fixed)["problems"]
    assert T.traces_settings(cfg, problems) == T.traces_settings(cfg, [dict(p) for p in problems])


def test_list_checkpoints_oldest_first_and_complete_only(tmp_path):
    for step, complete in ((10, True), (2, True), (30, False)):  # 30: save_checkpoint's rename never happened
        d = tmp_path / f"ckpt-{step:07d}"
        d.mkdir()
        (d / "config.json").write_text("{}")
        if complete:
            (d / "train_state.pt").write_bytes(b"x")
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(str(tmp_path))] == ["ckpt-0000002",
                                                                                         "ckpt-0000010"]


def test_a_save_starts_from_an_empty_temporary_folder(tmp_path):
    # a crashed save left .tmp-ckpt-N with a train_state.pt: the next save of that step must not carry it over
    from dataclasses import dataclass

    from model import ModelConfig, Transformer

    @dataclass
    class Cfg:
        x: int = 1

    class Tok:
        bos_id, eos_id, pad_id, stop_ids = 1, 2, 0, [2]

        def save(self, folder):
            (tmp_path / folder / "tokenizer.json").write_text("{}")
    stale = tmp_path / ".tmp-ckpt-0000005"
    stale.mkdir()
    (stale / "train_state.pt").write_bytes(b"half written by a crashed save")
    model = Transformer(ModelConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=24))
    checkpoint.save_checkpoint(str(tmp_path / "ckpt-0000005"), model, Tok(), Cfg())  # no train_state this time
    assert sorted(os.listdir(tmp_path)) == ["ckpt-0000005"]
    assert not (tmp_path / "ckpt-0000005" / "train_state.pt").exists()


def test_recover_final_when_another_rank_recovers_first(tmp_path, monkeypatch):
    """Two ranks recover at once: this one saw `final` missing, then the other renamed .tmp-final -> final before
    this one looked for .tmp-final, so this one's rename of .old-final meets a non-empty `final`: not an error, and
    the new checkpoint stays."""
    for name in (".old-final", ".tmp-final"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "model.safetensors").write_text(name)
    real, seen = os.path.exists, []

    def exists(p):
        if os.path.basename(p) == "final" and not seen:  # the other rank acts right after this check
            seen.append(real(p))
            os.rename(tmp_path / ".tmp-final", tmp_path / "final")
            return seen[0]
        return real(p)

    monkeypatch.setattr(checkpoint.os.path, "exists", exists)
    checkpoint.recover_final(str(tmp_path))
    assert seen == [False] and sorted(os.listdir(tmp_path)) == ["final"]
    assert (tmp_path / "final" / "model.safetensors").read_text() == ".tmp-final"


def test_checkpoint_files_reach_disk_before_the_rename(tmp_path, monkeypatch):
    """save_checkpoint fsyncs every file and the temporary folder before the rename that makes them the checkpoint,
    and the parent folder after it: without that, a power cut soon after the rename can leave the checkpoint's
    names pointing at empty files (delayed allocation), and the previous good checkpoint already rotated away."""
    import dataclasses

    import checkpoint as C
    import data as D
    from model import ModelConfig, Transformer

    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def rename(a, b):
        events.append(("rename", os.path.realpath(a), os.path.realpath(b)))
        real_rename(a, b)

    class Tok:
        bos_id, eos_id, pad_id, stop_ids = 1, 2, 3, [2]

        def save(self, folder):
            D.write_atomic(os.path.join(folder, "tokenizer.model"), b"spm")

    @dataclasses.dataclass
    class Cfg:
        lr: float = 1e-3

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    model = Transformer(ModelConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32,
                                    max_seq_len=32))
    for name in ("ckpt-0000002", "final", "final"):  # the second `final` replaces the first
        events.clear()
        folder = os.path.realpath(tmp_path / name)
        C.save_checkpoint(folder, model, Tok(), Cfg(), {"step": 2})
        tmp = os.path.realpath(tmp_path / f".tmp-{name}")
        first_rename = next(i for i, e in enumerate(events) if e[0] == "rename")
        synced = {e[1] for e in events[:first_rename] if e[0] == "fsync"}
        files = sorted(os.listdir(folder))
        assert files == ["config.json", "generation_config.json", "model.safetensors", "run_config.json",
                         "tokenizer.model", "train_state.pt"]
        assert {os.path.join(tmp, f) for f in files} | {tmp} <= synced, (name, synced)
        last_rename = max(i for i, e in enumerate(events) if e[0] == "rename")
        assert events[last_rename][1:] == (tmp, folder)
        assert ("fsync", os.path.realpath(tmp_path)) in events[last_rename + 1:]


def test_read_jsonl_drops_a_cut_last_line_and_names_a_bad_one(tmp_path, capsys):
    path = tmp_path / "pipeline.jsonl"
    assert checkpoint.read_jsonl(str(path)) == []
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b')  # killed in the middle of its last append
    assert checkpoint.read_jsonl(str(path)) == [{"a": 1}, {"a": 2}]
    assert "line 4 was cut short" in capsys.readouterr().out
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"pipeline.jsonl, line 2: not a JSON row"):
        checkpoint.read_jsonl(str(path))
    path.write_text('{"a": 1}\n{"a": 2\n')  # a whole last line (newline written) that is not JSON: not a cut write
    with pytest.raises(ValueError, match="line 2"):
        checkpoint.read_jsonl(str(path))


def test_generation_config_lists_every_stop_id(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    tok = SimpleNamespace(bos_id=1, eos_id=2, pad_id=0, stop_ids=[2, 7])  # a chat tokenizer: <|im_end|> and eos
    checkpoint.write_token_ids(str(tmp_path), tok)
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 1, "eos_token_id": [2, 7], "pad_token_id": 0}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg == {"model_type": "llama", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    checkpoint.write_token_ids(str(tmp_path), SimpleNamespace(bos_id=1, eos_id=2, pad_id=0, stop_ids=[2]))
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == 2  # one id: an int


def test_rng_state_roundtrip_restores_every_stream():
    state = checkpoint.rng_state()
    want = (random.random(), torch.rand(3).tolist(), np.random.rand())
    random.seed(99), torch.manual_seed(99), np.random.seed(99)  # drawn elsewhere meanwhile
    checkpoint.set_rng_state(state)
    assert (random.random(), torch.rand(3).tolist(), np.random.rand()) == want


def _fake_run(out, steps, final_at):
    for s in steps:
        _ckpt(out, s)
    (out / "final").mkdir(parents=True)
    (out / "final" / "config.json").write_text("{}")
    (out / "final" / "run_config.json").write_text(json.dumps({"train": {"max_steps": final_at}}))


def test_an_interrupted_extension_resumes_from_its_newest_checkpoint(tmp_path):
    out = tmp_path / "o"
    _fake_run(out, [2, 6, 8], final_at=4)  # finished at 4, extended to 10, killed after the step-8 checkpoint
    cfg = T.load_config(None, [f"--out_dir={out}", "--train.resume=true", "--train.max_steps=10"])
    assert checkpoint.prepare_out_dir(cfg) == str(out / "ckpt-0000008")
    cfg = T.load_config(None, [f"--out_dir={out}", "--train.resume=true", "--train.max_steps=4"])
    assert checkpoint.prepare_out_dir(cfg) == "final"


def test_rng_state_keeps_cuda_streams_and_resumes_a_cpu_checkpoint_on_cuda(monkeypatch):
    """On CUDA the state holds every device's generator and restores it; a checkpoint written without CUDA (no
    "cuda" key) still resumes on a CUDA machine, leaving its generators as they are."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["dev0", "dev1"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = checkpoint.rng_state()
    assert state["cuda"] == ["dev0", "dev1"]
    checkpoint.set_rng_state(state)
    assert restored == [["dev0", "dev1"]]
    del state["cuda"]  # written on a CPU machine
    checkpoint.set_rng_state(state)
    assert restored == [["dev0", "dev1"]]


def test_samples_rows_carry_their_step_and_a_resume_drops_the_later_ones(tmp_path):
    log = checkpoint.RunLog(str(tmp_path), start_step=0)
    log.log_samples(2, [{"completion": "a"}, {"completion": "b"}])
    log.log_samples(4, [{"completion": "c"}])
    log.close()
    rows = checkpoint.read_jsonl(str(tmp_path / "samples.jsonl"))
    assert rows == [{"step": 2, "completion": "a"}, {"step": 2, "completion": "b"}, {"step": 4, "completion": "c"}]
    checkpoint.RunLog(str(tmp_path), start_step=2).close()  # resumed from the step-2 checkpoint
    assert checkpoint.read_jsonl(str(tmp_path / "samples.jsonl")) == rows[:2]


def test_config_change_warning_skips_what_the_run_fills_in(tmp_path, capsys):
    """A copied run folder (another out_dir) and a "chat" template (recorded as the format it resolved to) are not
    changes; a changed lr is."""
    import dataclasses
    ckpt = tmp_path / "ckpt-0000002"
    ckpt.mkdir()
    saved = dataclasses.asdict(T.load_config(None, ["--out_dir=old/run", "--data.template=qwen"]))
    (ckpt / "run_config.json").write_text(json.dumps(saved))
    cfg = T.load_config(None, [f"--out_dir={tmp_path}", "--data.template=chat"])
    checkpoint.warn_if_config_changed(cfg, str(ckpt))
    assert capsys.readouterr().out == ""
    cfg = T.load_config(None, [f"--out_dir={tmp_path}", "--data.template=chat", "--train.lr=0.5"])
    checkpoint.warn_if_config_changed(cfg, str(ckpt))
    assert "has changed since that checkpoint was written (train.lr)" in capsys.readouterr().out
