"""train.py's distill stage: logit matching and reward-filtered traces from a teacher checkpoint, the traces cache,
padded vocabularies, and the settings it refuses before anything trains."""
import json
import math
import os
import shutil

import pytest
import torch

import train as T
from model import Transformer
from test_train import _read_metrics, pretrained  # noqa: F401 (the module-scoped fixture: a tiny trained teacher)


STUDENT = ["--stage", "distill", "--model.dim=16", "--model.n_heads=2", "--model.n_kv_heads=1",
           "--model.hidden_dim=32", "--model.n_layers=1", "--train.max_steps=3", "--train.eval_n=2",
           "--distill.max_new_tokens=8", "--distill.samples_per_prompt=2", "--data.n_train=12"]


@pytest.mark.parametrize("mode,source", [("logits", "teacher"), ("logits", "dataset"), ("traces", "teacher")])
def test_distill_stage(pretrained, tmp_path, mode, source, monkeypatch):
    toml, teacher = pretrained
    out = str(tmp_path / "student")
    dedup, real_filter = [], T.distill.filter_traces
    if mode == "traces":  # the tiny teacher is never right: a stand-in reward accepts odd-length texts
        monkeypatch.setattr(T, "accuracy_reward", lambda text, gold: float(len(text) % 2))
        monkeypatch.setattr(T.distill, "filter_traces", lambda samples, rewards, threshold, on: dedup.append(on) or
                            real_filter(samples, rewards, threshold, on))
    T.main(["--config", toml, *STUDENT, "--out_dir", out, "--distill.teacher", teacher,
            f"--distill.mode={mode}", f"--distill.source={source}"])
    rows = _read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in rows)
    if mode == "logits":
        assert {"distill", "ce", "agree"} <= set(rows[0]) and 0 <= rows[0]["agree"] <= 1
    else:
        kept = [json.loads(r) for r in open(os.path.join(out, "traces.jsonl"))]
        assert 0 < len(kept) <= 24  # 12 prompts x 2 samples, only the accepted ones, deduplicated
        assert dedup == [True]  # distill.dedup_traces (on by default) reaches the filter
        assert len({(tuple(k["prompt_ids"]), tuple(k["completion_ids"])) for k in kept}) == len(kept)
        tok = T.D.load_tokenizer(teacher)
        assert all(len(tok.decode(k["completion_ids"])) % 2 == 1 for k in kept)  # exactly the accepted ones
    hf = json.load(open(os.path.join(out, "final", "config.json")))
    assert hf["hidden_size"] == 16 and hf["vocab_size"] == 384  # the student's size, the teacher's vocabulary


def test_distill_from_a_teacher_with_padded_embeddings(pretrained, tmp_path):
    """Qwen-style padding: the teacher has more embedding rows than its tokenizer has tokens. A student from scratch
    takes the teacher's row count; an --init student with fewer rows is matched over the common rows."""
    from model import Transformer
    toml, small = pretrained
    base = Transformer.from_pretrained(small)
    cfg = dict(vars(base.cfg), vocab_size=base.cfg.vocab_size + 16)
    torch.manual_seed(0)
    padded = Transformer(type(base.cfg)(**cfg))
    state = {k: v.clone() for k, v in padded.state_dict().items()}
    for k, v in base.state_dict().items():
        state[k][: v.shape[0]] = v  # the real rows as trained, then 16 rows of padding
    padded.load_state_dict(state)
    teacher = str(tmp_path / "teacher")
    padded.save_pretrained(teacher)
    T.D.load_tokenizer(small).save(teacher)
    for name, extra in (("fresh", []), ("init", ["--init", small, "--distill.top_k=384"])):
        out = str(tmp_path / name)
        T.main(["--config", toml, *STUDENT, "--out_dir", out, "--distill.teacher", teacher, *extra])
        assert all(math.isfinite(r["loss"]) for r in _read_metrics(out))
        hf = json.load(open(os.path.join(out, "final", "config.json")))
        assert hf["vocab_size"] == (384 + 16 if name == "fresh" else 384)
    with pytest.raises(ValueError, match=r"top_k = 385: more than the 384 logits the teacher and student share"):
        T.main(["--config", toml, *STUDENT, "--out_dir", str(tmp_path / "k"), "--distill.teacher", teacher,
                "--init", small, "--distill.top_k=385"])
    short = Transformer(type(base.cfg)(**dict(vars(base.cfg), vocab_size=380)))  # fewer rows than tokens
    short.save_pretrained(str(tmp_path / "short"))
    T.D.load_tokenizer(small).save(str(tmp_path / "short"))
    with pytest.raises(ValueError, match=r"the teacher has 380 embedding rows, fewer than its tokenizer's 384"):
        T.main(["--config", toml, *STUDENT, "--out_dir", str(tmp_path / "s"), "--distill.teacher",
                str(tmp_path / "short"), "--init", small])


def test_cached_traces_sampled_with_other_settings_are_refused(pretrained, tmp_path, monkeypatch):
    """traces.jsonl is reused only when it was sampled with the same settings (kept beside it, .meta.json): a
    changed teacher budget or sample count is an error naming the keys, not a silent run on the old traces."""
    toml, shared_teacher = pretrained
    teacher = str(tmp_path / "teacher")  # a copy of its own: this test trains it on in place
    shutil.copytree(shared_teacher, teacher)
    monkeypatch.setattr(T, "accuracy_reward", lambda text, gold: float(len(text) % 2))
    traces = str(tmp_path / "shared" / "traces.jsonl")
    args = ["--config", toml, *STUDENT, "--distill.teacher", teacher, "--distill.mode=traces",
            "--distill.traces_file", traces]
    T.main(args + ["--out_dir", str(tmp_path / "a")])
    first = open(traces).read()
    assert json.load(open(str(tmp_path / "shared" / "traces.meta.json")))["samples_per_prompt"] == 2
    T.main(args + ["--out_dir", str(tmp_path / "b"), "--train.seed=1"])  # same settings: reused as they are
    assert open(traces).read() == first
    with pytest.raises(ValueError, match=r"other settings \(samples_per_prompt, max_new_tokens\)"):
        T.main(args + ["--out_dir", str(tmp_path / "c"), "--distill.samples_per_prompt=3",
                       "--distill.max_new_tokens=6"])
    model = Transformer.from_pretrained(teacher)  # the teacher trained on in the same folder: other weights
    with torch.no_grad():
        model.norm.weight.mul_(1.5)
    model.save_pretrained(teacher)
    with pytest.raises(ValueError, match=r"other settings \(teacher_weights\)"):
        T.main(args + ["--out_dir", str(tmp_path / "e")])
    os.remove(str(tmp_path / "shared" / "traces.meta.json"))  # a file made elsewhere, without settings: used as is
    T.main(args + ["--out_dir", str(tmp_path / "d"), "--distill.samples_per_prompt=3"])
    assert open(traces).read() == first
    # damaged files are named, with the line or trace
    meta, n = str(tmp_path / "shared" / "traces.meta.json"), first.count("\n")
    open(meta, "w").write("{")
    with pytest.raises(ValueError, match=r"traces.meta.json is not valid JSON .*: delete it and .*traces.jsonl to"):
        T.main(args + ["--out_dir", str(tmp_path / "f")])
    os.remove(meta)
    for tail, match in (("not json\n", rf"traces.jsonl, line {n + 1}: not a JSON row"),
                        ('{"prompt_ids": [1]}\n', rf"traces.jsonl, trace {n + 1}: needs prompt_ids and completion_ids"),
                        ('{"prompt_ids": [1], "completion_ids": ["a"]}\n', rf"trace {n + 1}: needs")):
        open(traces, "w").write(first + tail)
        with pytest.raises(ValueError, match=match):
            T.main(args + ["--out_dir", str(tmp_path / "g")])


def test_distill_settings_that_cannot_train_fail_at_the_start(pretrained, tmp_path):
    toml, teacher = pretrained
    args = ["--config", toml, *STUDENT, "--distill.teacher", teacher]
    for extra, match in ((["--distill.max_new_tokens=1000"], r"training .* exceeds model.max_seq_len"),
                         (["--distill.mode=traces", "--distill.max_new_tokens=1000"], r"exceeds model.max_seq_len"),
                         (["--distill.source=dataset", "--data.seq_len=4"], r"every distill prompt is longer"),
                         (["--distill.top_k=1000"], r"top_k = 1000: more than the 384 logits"),
                         (["--model.max_seq_len=1024", "--distill.max_new_tokens=300"],  # the student fits it
                          r"prompt plus distill.max_new_tokens, is .* more than the teacher's max_seq_len 256"),
                         (["--distill.traces_file=" + str(tmp_path)],
                          r"\[distill\]\.traces_file = .*: must be a JSONL")):
        out = tmp_path / extra[-1].split("=")[0].strip("-")
        with pytest.raises(ValueError, match=match):
            T.main(args + ["--out_dir", str(out), *extra])
        assert not (out / "metrics.jsonl").exists() or not _read_metrics(str(out)), extra
        assert not (out / "traces.jsonl").exists()  # before the teacher sampled anything


def test_no_accepted_trace_is_not_cached(pretrained, tmp_path, monkeypatch):
    # a failed run must not leave an empty traces.jsonl that the fixed re-run reuses (and fails on again)
    toml, teacher = pretrained
    out = str(tmp_path / "student")
    args = ["--config", toml, *STUDENT, "--out_dir", out, "--distill.teacher", teacher, "--distill.mode=traces"]
    with pytest.raises(ValueError, match="no accepted trace"):  # the tiny teacher is never right
        T.main(args)
    assert not os.path.exists(os.path.join(out, "traces.jsonl"))
    monkeypatch.setattr(T, "accuracy_reward", lambda text, gold: 1.0)
    T.main(args)
    assert len(open(os.path.join(out, "traces.jsonl")).readlines()) > 0


def test_distill_refuses_a_different_tokenizer(pretrained, tmp_path):
    toml, teacher = pretrained
    other = str(tmp_path / "other")
    T.main(["--config", toml, "--out_dir", other, "--train.max_steps=1", "--train.eval_n=0",
            "--data.vocab_size=400"])
    with pytest.raises(ValueError, match="differs from the teacher"):
        T.main(["--config", toml, *STUDENT, "--out_dir", str(tmp_path / "s"), "--distill.teacher", teacher,
                "--init", os.path.join(other, "final")])


def _traces_cfg(tmp_path, **distill):
    """A distill config for teacher_traces alone: a stand-in teacher folder, traces in tmp_path/t.jsonl."""
    teacher = tmp_path / "teacher"
    teacher.mkdir(exist_ok=True)
    (teacher / "model.safetensors").write_bytes(b"x")
    cfg = T.Config(stage="distill", out_dir=str(tmp_path / "o"))
    cfg.distill.teacher, cfg.distill.traces_file, cfg.data.template = str(teacher), str(tmp_path / "t.jsonl"), "plain"
    for k, v in distill.items():
        setattr(cfg.distill, k, v)
    return cfg


@pytest.mark.parametrize("change, key", [(lambda c, p: setattr(c.data, "template", "r1"), "template"),
                                         (lambda c, p: setattr(c.distill, "reward_threshold", 0.25), "reward_threshold"),
                                         (lambda c, p: setattr(c.distill, "dedup_traces", not c.distill.dedup_traces),
                                          "dedup_traces"),
                                         (lambda c, p: p[0].update(answer="99"), "problems"),
                                         (lambda c, p: setattr(c.distill, "sample_temperature", 0.5),
                                          "sample_temperature")])
def test_cached_traces_check_every_setting(tmp_path, change, key):
    """teacher_traces refuses a cached file whose .meta.json differs in any one setting (read before sampling)."""
    cfg = _traces_cfg(tmp_path)
    problems = [{"question": "1+1", "answer": "2"}, {"question": "2+2", "answer": "4"}]
    (tmp_path / "t.jsonl").write_text(json.dumps({"prompt_ids": [1], "completion_ids": [2, 3]}) + "\n")
    (tmp_path / "t.meta.json").write_text(json.dumps(T.traces_settings(cfg, problems)))
    assert T.teacher_traces(cfg, None, None, problems, None, "cpu") == [([1], [2, 3])]  # same settings: reused
    change(cfg, problems)
    with pytest.raises(ValueError, match=rf"other settings \({key}\)"):
        T.teacher_traces(cfg, None, None, problems, None, "cpu")


def test_teacher_traces_samples_each_prompt_samples_per_prompt_times(tmp_path, monkeypatch):
    """samples_per_prompt = 3: each prompt goes to the teacher 3 times, in order; every accepted sample is kept
    (dedup off)."""
    from types import SimpleNamespace
    cfg = _traces_cfg(tmp_path, samples_per_prompt=3, dedup_traces=False)
    seen = []
    monkeypatch.setattr(T.E, "complete", lambda teacher, prompts, *a, **k: seen.append(prompts) or
                        [[5, 6] for _ in prompts])
    monkeypatch.setattr(T, "accuracy_reward", lambda text, gold: 1.0)
    tok = SimpleNamespace(vocab_size=100, stop_ids=[2], decode=lambda ids: "x")
    problems = [{"question": "1+1", "answer": "2"}, {"question": "2+2", "answer": "4"}]
    kept = T.teacher_traces(cfg, None, tok, problems, [[1], [3]], torch.device("cpu"))
    assert seen == [[[1], [1], [1], [3], [3], [3]]]
    assert kept == [([1], [5, 6])] * 3 + [([3], [5, 6])] * 3


def test_an_empty_traces_file_is_named(tmp_path):
    """A traces file with no trace (made elsewhere, no .meta.json) is an error naming it, not a run on nothing."""
    cfg = _traces_cfg(tmp_path)
    (tmp_path / "t.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"t\.jsonl holds no trace"):
        T.teacher_traces(cfg, None, None, [{"question": "1+1", "answer": "2"}], None, torch.device("cpu"))
