"""How a pipeline's steps get their settings (command line over config file, a step's own over the top level), and
what is refused before the first step trains."""
import dataclasses
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import checkpoint
import config as C
import pipeline
import report
import train as T
from test_pipeline import TOY
from test_train import PIPE, _read_metrics


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "toy.toml").write_text(TOY)
    return str(tmp_path / "toy.toml")


def steps_of(toy, argv):
    return dict(pipeline.pipeline_configs(T.load_config(toy, argv), T.RUNNERS))


def test_the_command_line_beats_the_steps_tables(toy):
    """Every step's table sets train.max_steps = 2: --train.max_steps=5 used to be dropped for all of them."""
    steps = steps_of(toy, ["--train.max_steps=5"])
    assert {name: s.train.max_steps for name, s in steps.items()} == dict.fromkeys(steps, 5)
    steps = steps_of(toy, ["--train.max_steps=5", "--pipeline.sft.train.max_steps=7"])  # a step's own beats it
    assert [s.train.max_steps for s in steps.values()] == [5, 7, 5, 5]
    steps = steps_of(toy, ["--grpo.group_size=4", "--train.lr=0.01"])  # a section the grpo table also sets
    assert steps["grpo"].grpo.group_size == 4 and steps["grpo"].grpo.max_new_tokens == 6  # its other keys stay
    assert all(s.train.lr == 0.01 for s in steps.values())
    assert steps_of(toy, [])["grpo"].grpo.group_size == 2  # no command line: the tables as written
    # the keys that wire steps together are not replaced behind a step's back
    folder = os.path.dirname(toy)  # a folder: for pretrain, which has no init of its own, it is a valid start
    with pytest.raises(ValueError, match=r"\[pipeline.sft\]: --init=.* on the command line would replace "
                                         r"the step's own init = 'pretrain'; .*--pipeline.sft.init="):
        steps_of(toy, [f"--init={folder}"])
    with pytest.raises(ValueError, match=r"\[pipeline.student\]: --distill.teacher=.* would replace the step's own "
                                         r"distill.teacher = 'grpo'; .*--pipeline.student.distill.teacher="):
        steps_of(toy, [f"--distill.teacher={folder}"])
    out = steps_of(toy, ["--out_dir=/tmp/x"])  # the pipeline's out_dir: each step's folder under it
    assert out["sft"].out_dir == os.path.join("/tmp/x", "sft") and out["sft"].init == "/tmp/x/pretrain/final"


def test_steps_picked_on_the_command_line_start_from_the_left_out_steps_results(toy, tmp_path):
    out = tmp_path / "o"
    argv = ["--pipeline.steps=grpo,student", f"--out_dir={out}"]
    with pytest.raises(ValueError, match=r"\[pipeline.grpo\]: init = '.*/o/sft/final' is neither"):
        steps_of(toy, argv)  # sft has not run: no results to start from
    os.makedirs(out / "sft" / "final")
    cfg = T.load_config(toy, argv)
    steps = dict(pipeline.pipeline_configs(cfg, T.RUNNERS))
    assert list(steps) == ["grpo", "student"] and steps["grpo"].init == str(out / "sft" / "final")
    assert steps["student"].distill.teacher == str(out / "grpo" / "final")
    rep = cfg.pipeline["report"]  # the report evaluates the steps that run
    assert rep["rl"] == ["grpo"] and rep["distill"] == ["grpo", "student"] and rep["zero"] == "grpo"
    cfg = T.load_config(toy, ["--pipeline.steps=pretrain,sft", f"--out_dir={out}"])
    assert list(dict(pipeline.pipeline_configs(cfg, T.RUNNERS))) == ["pretrain", "sft"]
    assert cfg.pipeline["report"]["distill"] == [] and cfg.pipeline["report"]["zero"] == ""
    with pytest.raises(ValueError, match=r"\[pipeline\] step 'studnt' has no \[pipeline.studnt\] table and is not a "
                                         r"stage; steps with tables: \['grpo', .*'student'\]; stages: \['distill', "):
        steps_of(toy, ["--pipeline.steps=grpo,studnt", f"--out_dir={out}"])  # a typo, not a stage


def test_pipeline_settings_on_a_single_stage_are_refused(tmp_path):
    from test_train import TINY
    (tmp_path / "t.toml").write_text(TINY)
    for extra in (["--pipeline.steps=a"], ["--pipeline.jobs=2"]):
        with pytest.raises(ValueError, match=r"\[pipeline\] settings \(.*\) only apply with stage = \"pipeline\""):
            T.main(["--config", str(tmp_path / "t.toml"), "--out_dir", str(tmp_path / "o"), *extra])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("table,match", [
    ('stage = "grpo"', r"\[pipeline.rl\]: the grpo stage starts from a checkpoint"),
    ('stage = "distill"', r"\[pipeline.rl\]: the distill stage needs \[distill\].teacher"),
    ('stage = "sft"\ninit = "pretrain"\ntrain = {max_new_tokens = 256}',
     r"\[pipeline.rl\]: train.max_new_tokens = 256 leaves no room for a prompt in the model's max_seq_len 256"),
    ('stage = "grpo"\ninit = "pretrain"\ngrpo = {max_new_tokens = 300}',
     r"\[pipeline.rl\]: grpo.max_new_tokens = 300 leaves no room for a prompt in the model's max_seq_len 256"),
    ('stage = "distill"\ninit = "pretrain"\ndistill = {teacher = "pretrain", max_new_tokens = 256}',
     r"\[pipeline.rl\]: distill.max_new_tokens = 256 leaves no room for a prompt in the student's max_seq_len 256"),
    ('stage = "distill"\nmodel = {max_seq_len = 512}\ndistill = {teacher = "pretrain", mode = "traces", '
     'max_new_tokens = 300}',  # a student from scratch with a longer context than its teacher's
     r"\[pipeline.rl\]: distill.max_new_tokens = 300 leaves no room for a prompt in the teacher's max_seq_len 256"),
])
def test_a_later_steps_missing_settings_fail_before_the_first_step_trains(tmp_path, table, match):
    from test_train import TINY
    toml = TINY.replace('stage = "pretrain"', 'stage = "pipeline"') + f"""
[pipeline]
steps = ["pretrain", "rl"]
[pipeline.pretrain]
train = {{max_steps = 1}}
[pipeline.rl]
{table}
"""
    (tmp_path / "p.toml").write_text(toml)
    with pytest.raises(ValueError, match=match):
        T.main(["--config", str(tmp_path / "p.toml"), "--out_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "pretrain").exists()


def test_a_step_killed_without_its_end_row_still_warns_of_a_changed_config(tmp_path, monkeypatch, capsys):
    """SIGKILL (the OOM killer) leaves no row of a run's end; the row written as the step starts holds its config,
    so a resume with other settings still says which keys changed. Here pretrain finishes but its end row is lost,
    as when the kill comes between `final` and the log."""
    real = pipeline.log_step
    monkeypatch.setattr(pipeline, "log_step", lambda *a, **k: real(*a, **k) if k.get("started") else None)
    from test_train import TINY
    (tmp_path / "p.toml").write_text(TINY.replace('stage = "pretrain"', 'stage = "pipeline"') +
                                     '[pipeline]\nsteps = ["pretrain"]\n[pipeline.pretrain]\ntrain = {max_steps = 1}\n')
    out = str(tmp_path / "o")
    args = ["--config", str(tmp_path / "p.toml"), "--out_dir", out, "--train.eval_n=0"]
    T.main(args)
    monkeypatch.setattr(pipeline, "log_step", real)
    rows = checkpoint.read_jsonl(os.path.join(out, "pipeline.jsonl"))
    assert [r["started"] for r in rows] == [True]
    assert report.step_walls(rows) == {}  # its time is unknown: the report shows nan, not 0
    capsys.readouterr()
    T.main(args + ["--train.resume=true", "--pipeline.pretrain.train.lr=0.01"])
    assert "warning: pipeline step 'pretrain' is finished, so the resumed pipeline skips it, but its config has " \
           "changed since it ran (train.lr)" in capsys.readouterr().out


def test_step_walls_with_the_rows_runs_write_as_they_start():
    rows = [{"step": "a", "started": True, "wall_s": 0.0, "finished": False},
            {"step": "a", "wall_s": 5.0, "finished": False},  # SIGTERM
            {"step": "a", "started": True, "wall_s": 0.0, "finished": False},  # resumed
            {"step": "a", "wall_s": 2.0, "finished": True},
            {"step": "b", "started": True, "wall_s": 0.0, "finished": False},  # SIGKILL: nothing known
            {"step": "c", "wall_s": 4.0, "finished": True},
            {"step": "c", "started": True, "wall_s": 0.0, "finished": False, "extends": True},
            {"step": "c", "wall_s": 1.0, "finished": True, "extends": True},
            {"step": "d", "wall_s": 4.0, "finished": True},
            {"step": "d", "started": True, "wall_s": 0.0, "finished": False},  # redone from scratch
            {"step": "d", "wall_s": 3.0, "finished": True}]
    assert report.step_walls(rows) == {"a": 7.0, "c": 5.0, "d": 3.0}


def test_toml_content_errors_name_the_file(tmp_path):
    for body, err, match in (('[trian]\nlr = 1.0\n', KeyError, "unknown key trian"),
                             ('[train]\nmax_steps = "ten"\n', TypeError, "train.*max_steps: expected int"),
                             ('[model]\nn_heads = 3\n', ValueError, "not divisible")):
        (tmp_path / "bad.toml").write_text(body)
        with pytest.raises(err, match=rf"bad.toml: .*{match}"):
            T.load_config(str(tmp_path / "bad.toml"))


def test_ambiguous_command_lines_are_refused():
    assert C.parse_overrides(["--train.lr=1", "--train.lr=2"]) == {"train": {"lr": "2"}}  # the last one, as argparse
    for args, match in ((["--out_dir", "--train.max_steps=3"], "--out_dir needs a value"),
                        (["--train.lr=1", "--train.lr.x=2"], "train.lr was given a value"),
                        (["--train.lr.x=2", "--train.lr=1"], "also gives keys of train.lr")):
        with pytest.raises(ValueError, match=match):
            C.parse_overrides(args)
    assert json.dumps(C.parse_overrides(["--init", "-x"])) == '{"init": "-x"}'  # a value may start with one dash


def test_pipeline_runs_steps_in_order_and_resume_skips_finished(tmp_path, monkeypatch, capsys):
    (tmp_path / "p.toml").write_text(PIPE)
    out = str(tmp_path / "demo")
    args = ["--config", str(tmp_path / "p.toml"), "--out_dir", out, "--train.eval_n=0"]
    real, calls = T.run_grpo, []
    monkeypatch.setitem(T.RUNNERS, "grpo", lambda c: (calls.append(c), (_ for _ in ()).throw(KeyboardInterrupt)))
    with pytest.raises(KeyboardInterrupt):  # dies in the third step
        T.main(args)
    rl_cfg = calls[0]
    assert rl_cfg.init == os.path.join(out, "sft", "final") and rl_cfg.out_dir == os.path.join(out, "rl")
    assert rl_cfg.grpo.group_size == 2 and rl_cfg.train.max_steps == 2 and rl_cfg.model.dim == 32
    sft_weights = load_file(os.path.join(out, "sft", "final", "model.safetensors"))

    monkeypatch.setitem(T.RUNNERS, "grpo", real)
    T.main(args + ["--train.resume=true"])
    again = load_file(os.path.join(out, "sft", "final", "model.safetensors"))
    assert all(torch.equal(sft_weights[k], again[k]) for k in again)  # finished steps are not redone
    for name, n in (("pretrain", 3), ("sft", 2), ("rl", 2)):
        assert os.path.exists(os.path.join(out, name, "final", "model.safetensors"))
        assert [r["step"] for r in _read_metrics(os.path.join(out, name)) if r["step"]][-1] == n
    json.loads(open(os.path.join(out, "pipeline.jsonl")).readline())
    with pytest.raises(FileExistsError, match="pretrain already holds checkpoints"):  # skipped only when resuming
        T.main(args)
    capsys.readouterr()
    T.main(args + ["--train.resume=true"])  # nothing left to run, nothing changed: no warning
    assert "warning" not in capsys.readouterr().out
    T.main(args + ["--train.resume=true", "--train.lr=1e-3", "--pipeline.rl.grpo.beta=0.5"])
    warned = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: pipeline step")]
    assert [w.split("'")[1] for w in warned] == ["pretrain", "sft", "rl"]
    assert "(train.lr)" in warned[0] and "(train.lr)" in warned[1] and "(grpo.beta, train.lr)" in warned[2]
    assert os.path.join(out, "rl") in warned[2]
    assert all(torch.equal(sft_weights[k], v) for k, v in load_file(os.path.join(out, "sft", "final",
                                                                                 "model.safetensors")).items())
    shutil.rmtree(os.path.join(out, "sft"))  # redo sft: rl, which started from the old sft, is kept but named
    T.main(args + ["--train.resume=true"])
    warned = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: pipeline step")]
    assert warned == [f"warning: pipeline step 'rl' is finished and skipped, but ['sft'], which it starts from, runs "
                      f"again; remove {os.path.join(out, 'rl')} to redo it too"]
    T.main(args + ["--train.resume=true", "--pipeline.rl.train.max_steps=3"])  # a raised max_steps extends rl
    printed = capsys.readouterr().out
    assert f"from {os.path.join(out, 'rl', 'final')} at step 2" in printed and "warning" not in printed
    assert [r["step"] for r in _read_metrics(os.path.join(out, "rl")) if r["step"]][-1] == 3
    rows = [json.loads(line) for line in open(os.path.join(out, "pipeline.jsonl"))]
    rl = [r for r in rows if r["step"] == "rl"]
    assert rl[-1]["extends"] and rl[-2]["extends"] and rl[-2]["started"]  # the extending run's end and start rows
    assert not any(r.get("extends") for r in rl[:-2])
    import report
    assert report.step_walls(rows)["rl"] == pytest.approx(sum(r["wall_s"] for r in rl))  # its runs add up


def test_pipeline_config_errors_name_the_step(tmp_path):
    (tmp_path / "p.toml").write_text(PIPE.replace("train = {max_steps = 2}", "train = {max_stepz = 2}"))
    with pytest.raises(KeyError, match=r"\[pipeline\.sft\]: unknown key \[train\]\.max_stepz"):
        T.main(["--config", str(tmp_path / "p.toml"), "--out_dir", str(tmp_path / "o")])
    assert not os.path.exists(tmp_path / "o" / "pretrain")  # checked before any step runs
    (tmp_path / "p.toml").write_text(PIPE.replace('init = "sft"', 'init = "stf"'))
    with pytest.raises(ValueError, match=r"\[pipeline\.rl\]: init = 'stf' is neither an earlier step"):
        T.main(["--config", str(tmp_path / "p.toml"), "--out_dir", str(tmp_path / "o")])
    assert not os.path.exists(tmp_path / "o" / "pretrain")


def test_stage_on_the_command_line_is_the_pipelines_own(toy):
    """P2: `--stage pipeline` on the command line is not carried into each step (it would make every step a
    'pipeline')."""
    steps = steps_of(toy, ["--stage=pipeline"])
    assert {n: s.stage for n, s in steps.items()} == {"pretrain": "pretrain", "sft": "sft", "grpo": "grpo",
                                                      "student": "distill"}



def test_an_interrupted_extension_compares_with_its_own_run(tmp_path, capsys):
    """P11: a finished step extended (max_steps raised) and interrupted: the resume compares with the extension's
    config (that of its own checkpoint), not the run that first finished it."""
    from test_train import TINY
    (tmp_path / "p.toml").write_text(TINY.replace('stage = "pretrain"', 'stage = "pipeline"') +
                                     '[pipeline]\nsteps = ["pretrain"]\n[pipeline.pretrain]\ntrain = {max_steps = 2}\n')
    out = tmp_path / "o"
    args = ["--config", str(tmp_path / "p.toml"), "--out_dir", str(out), "--train.eval_n=0", "--train.save_every=2"]
    T.main(args)
    extend = args + ["--train.resume=true", "--pipeline.pretrain.train.max_steps=6"]
    T.main(extend)  # its step-4 checkpoint holds max_steps = 6
    shutil.rmtree(out / "pretrain" / "final")  # as if killed after step 4
    capsys.readouterr()
    T.main(extend)
    said = capsys.readouterr().out
    assert "resuming pretrain from" in said and "ckpt-0000004" in said and "warning" not in said


def test_a_pipeline_config_built_without_load_config(tmp_path):
    """P14: a Config built in code (no load_config, so no cli_overrides attribute) still gives its steps."""
    cfg = T.Config()
    C.apply_table(cfg, {"stage": "pipeline", "out_dir": str(tmp_path),
                        "pipeline": {"steps": ["pretrain", "sft"], "sft": {"init": "pretrain"}}}, "")
    assert not hasattr(cfg, "cli_overrides")
    steps = dict(pipeline.pipeline_configs(cfg, T.RUNNERS))
    assert steps["sft"].init == os.path.join(str(tmp_path), "pretrain", "final")


# ---- regression tests for bugs found in review (each failed on the code before its fix) ----


def test_a_cut_last_line_does_not_break_the_next_rows(tmp_path):
    """A kill mid-write leaves a cut last line: read_jsonl drops it, and the next row appended must not be glued to
    it (which made a line in the middle that no later read could pass)."""
    cfg = T.Config(); cfg.out_dir = str(tmp_path)
    path = tmp_path / "pipeline.jsonl"
    path.write_text(json.dumps({"step": "a", "wall_s": 1.0, "finished": True}) + "\n" + '{"step": "b", "wall_s": 2.')
    assert len(checkpoint.read_jsonl(str(path))) == 1  # the resume's read: the cut line dropped
    step = T.Config(); step.stage = "sft"
    pipeline.log_step(cfg, "b", step, 0.0, False, started=True)
    assert [r["step"] for r in checkpoint.read_jsonl(str(path))] == ["a", "b"]



def test_init_for_the_others_with_a_per_step_init(toy):
    """--init for the steps without one of their own is allowed when each step with its own init keeps it on the
    command line too (--pipeline.NAME.init): nothing would be replaced behind its back."""
    folder = os.path.dirname(toy)
    steps = steps_of(toy, [f"--init={folder}", "--pipeline.sft.init=pretrain", "--pipeline.grpo.init=sft"])
    assert steps["pretrain"].init == folder and steps["sft"].init.endswith(os.path.join("pretrain", "final"))


def _pcfg(tmp_path, pipe, argv=()):
    cfg = T.load_config(None, ["--stage=pipeline", f"--out_dir={tmp_path / 'o'}", *argv])
    C.apply_table(cfg, {"pipeline": pipe}, "")
    return cfg


def test_a_table_for_a_step_not_in_steps_is_a_typo(tmp_path):
    cfg = _pcfg(tmp_path, {"steps": ["pretrain", "sft"], "sft": {"init": "pretrain"}, "stf": {"train": {"lr": 1e-3}}})
    with pytest.raises(KeyError, match=r"tables for steps not in `steps`: \['stf'\]"):
        pipeline.pipeline_configs(cfg, T.RUNNERS)


def test_a_step_named_twice_is_refused(tmp_path):
    cfg = _pcfg(tmp_path, {"steps": ["pretrain", "pretrain"]})
    with pytest.raises(ValueError, match="steps names 'pretrain' twice"):
        pipeline.pipeline_configs(cfg, T.RUNNERS)


def test_a_step_cannot_be_a_pipeline(tmp_path):
    cfg = _pcfg(tmp_path, {"steps": ["inner"], "inner": {"stage": "pipeline"}})
    with pytest.raises(ValueError, match=r"\[pipeline\.inner\]: unknown stage 'pipeline'"):
        pipeline.pipeline_configs(cfg, T.RUNNERS)


def test_a_step_that_fails_logs_its_time_unfinished(tmp_path):
    cfg = _pcfg(tmp_path, {"steps": ["pretrain"]})

    def fails(step):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.run_pipeline(cfg, {**T.RUNNERS, "pretrain": fails})
    rows = checkpoint.read_jsonl(str(tmp_path / "o" / "pipeline.jsonl"))
    assert [(r["step"], r["finished"], r.get("started", False)) for r in rows] == [("pretrain", False, True),
                                                                                  ("pretrain", False, False)]


def test_a_skipped_step_compares_with_the_run_that_wrote_final(tmp_path, capsys):
    cfg = _pcfg(tmp_path, {"steps": ["pretrain"]})
    (_, step), = pipeline.pipeline_configs(cfg, T.RUNNERS)
    now = json.loads(json.dumps(dataclasses.asdict(step)))
    old = json.loads(json.dumps(dataclasses.asdict(step)))
    old["train"]["lr"] = 1.0
    rows = [{"step": "pretrain", "finished": True, "config": old},   # its first run, then one redone from scratch
            {"step": "pretrain", "finished": True, "config": now}]   # with today's config: that one wrote final
    pipeline.warn_if_changed(rows, "pretrain", step)
    assert capsys.readouterr().out == ""
    pipeline.warn_if_changed(rows[::-1], "pretrain", step)
    assert "(train.lr)" in capsys.readouterr().out


def _timed_step(step):
    """A stand-in stage for side_by_side's worker processes (module level, so a spawned worker can import it): it
    notes the torch threads it was given, then takes 2 s as step 'b' and no time as any other."""
    import time
    os.makedirs(step.out_dir, exist_ok=True)
    with open(os.path.join(step.out_dir, "threads"), "w") as f:
        f.write(str(torch.get_num_threads()))
    time.sleep(2.0 if os.path.basename(step.out_dir) == "b" else 0.0)


def _killed_step(step):
    import signal
    os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer, say: no exception, no exit code of its own


def test_side_by_side_runs_at_most_jobs_steps_with_cores_over_jobs_threads(tmp_path):
    """jobs = 2 with four independent steps: never more than two workers at once (a new one starts as one ends,
    not as many as are waiting), each with cpu_count // 2 threads; each end row spans the step's wall time."""
    cfg = _pcfg(tmp_path, {"steps": list("abcd"), "jobs": 2, **{n: {"stage": "pretrain"} for n in "abcd"}})
    pipeline.run_pipeline(cfg, {**T.RUNNERS, "pretrain": _timed_step})
    rows = checkpoint.read_jsonl(str(tmp_path / "o" / "pipeline.jsonl"))
    live = most = 0
    for r in rows:  # in the order the pipeline saw workers start and end
        live += 1 if r.get("started") else -1
        most = max(most, live)
    assert most == 2 and live == 0 and sorted(r["step"] for r in rows if r["finished"]) == list("abcd")
    for r in rows:
        if not r.get("started"):
            assert r["end"] - r["start"] == pytest.approx(r["wall_s"], abs=0.05), r
    assert next(r["wall_s"] for r in rows if r["step"] == "b" and r["finished"]) >= 2.0
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert [open(tmp_path / "o" / n / "threads").read() for n in "abcd"] == [str(threads)] * 4


def test_a_worker_killed_by_a_signal_fails_its_step(tmp_path):
    """A worker killed by a signal (exit code -9) has not finished its step: the pipeline stops and names it, and
    the step's time is logged unfinished, not as a finished run a resume would skip."""
    cfg = _pcfg(tmp_path, {"steps": ["pretrain"], "jobs": 2})
    with pytest.raises(RuntimeError, match=r"pipeline step 'pretrain' failed \(exit code -9\)"):
        pipeline.run_pipeline(cfg, {**T.RUNNERS, "pretrain": _killed_step})
    rows = checkpoint.read_jsonl(str(tmp_path / "o" / "pipeline.jsonl"))
    assert [(r["step"], r["finished"], r.get("started", False)) for r in rows] == [("pretrain", False, True),
                                                                                  ("pretrain", False, False)]


def test_a_pipeline_without_steps_is_refused(tmp_path):
    """steps = [] (or --pipeline.steps= with no names) would run nothing and succeed: an error instead."""
    for steps in ([], ""):
        with pytest.raises(ValueError, match=r"stage = 'pipeline' needs \[pipeline\] steps"):
            pipeline.pipeline_configs(_pcfg(tmp_path, {"steps": steps}), T.RUNNERS)


def test_sigterm_exits_with_the_status_of_a_process_it_killed():
    """SIGTERM becomes SystemExit(128 + 15), the status a shell or job scheduler reads as "terminated by SIGTERM"
    (15 would read as an ordinary failure)."""
    import signal
    with pytest.raises(SystemExit) as e:
        pipeline._exit(signal.SIGTERM, None)
    assert e.value.code == 143
