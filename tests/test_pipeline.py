"""pipeline.py + report.py: a toy end-to-end pipeline (pretrain -> SFT -> GRPO -> distill -> report) in seconds."""
import json
import os

import pytest

import train as T
from test_train import TINY

TOY = TINY.replace('stage = "pretrain"', 'stage = "pipeline"') + """
[pipeline]
steps = ["pretrain", "sft", "grpo", "student"]
[pipeline.pretrain]
train = {max_steps = 2}
[pipeline.sft]
init = "pretrain"
train = {max_steps = 2}
[pipeline.grpo]
init = "sft"
train = {max_steps = 2, batch_size = 2}
grpo = {group_size = 2, max_new_tokens = 6}
[pipeline.student]
stage = "distill"
model = {dim = 16, n_heads = 2, n_kv_heads = 1, hidden_dim = 32, n_layers = 1}
distill = {teacher = "grpo", max_new_tokens = 6}
train = {max_steps = 2}
[pipeline.report]
rl = ["sft", "grpo"]
distill = ["grpo", "student"]
zero = "grpo"
n = 2
k = [1, 2]
n_test = 3
max_new_tokens = 8
"""


def test_toy_pipeline_produces_every_artifact(tmp_path):
    (tmp_path / "toy.toml").write_text(TOY)
    out = str(tmp_path / "demo")
    T.main(["--config", str(tmp_path / "toy.toml"), "--out_dir", out, "--train.eval_n=2"])
    for name in ("pretrain", "sft", "grpo", "student"):
        assert os.path.exists(os.path.join(out, name, "final", "model.safetensors")), name
        assert os.path.getsize(os.path.join(out, name, "metrics.jsonl")) > 0, name
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["n_test"] == 3 and [r["step"] for r in rep["rl"]] == ["sft", "grpo"]
    for r in rep["rl"]:
        assert 0 <= r["pass@1"] <= r["pass@2"] <= 1 and 0 <= r["greedy"] <= 1 and "maj@2" in r
    params = {r["step"]: r["params"] for r in rep["distill"]}
    assert params["student"] < params["grpo"]
    assert set(rep["wall_s"]) == {"pretrain", "sft", "grpo", "student"} and all(v > 0 for v in rep["wall_s"].values())
    w, chain = rep["wall_s"], {r["step"]: r["with_init_s"] for r in rep["distill"]}
    assert chain["grpo"] == pytest.approx(w["pretrain"] + w["sft"] + w["grpo"]) and chain["student"] == w["student"]
    grpo_rows = [json.loads(x) for x in open(os.path.join(out, "grpo", "metrics.jsonl"))]
    assert [z["step"] for z in rep["zero"]] == [r["step"] for r in grpo_rows if "reward_mean" in r]
    md = open(os.path.join(out, "report.md")).read()
    assert "| step | greedy | pass@1 | pass@2 | maj@1 | maj@2 |" in md and "| student |" in md
    assert "format_rate" in md and md.startswith("# r1-mini pipeline report\n\nHeld-out synthetic test problems: 3.")
    # run again without --train.resume: refused before any step runs, so no time is logged for it
    log = open(os.path.join(out, "pipeline.jsonl")).read()
    with pytest.raises(FileExistsError, match="pipeline step .pretrain.: .* re-run with --train.resume=true"):
        T.main(["--config", str(tmp_path / "toy.toml"), "--out_dir", out, "--train.eval_n=2"])
    assert open(os.path.join(out, "pipeline.jsonl")).read() == log


def test_side_by_side_matches_one_at_a_time(tmp_path):
    """[pipeline] jobs = 2: independent steps run at once in worker processes, a step never starts before the
    steps it starts from are done, and every checkpoint equals the one-at-a-time run's."""
    import torch
    from safetensors.torch import load_file
    (tmp_path / "toy.toml").write_text(TOY.replace("[pipeline.report]", "[pipeline.other]\nstage = \"sft\"\n"
                                                   "train = {max_steps = 2}\n[pipeline.report]")
                                       .replace('steps = ["pretrain", "sft", "grpo", "student"]',
                                                'steps = ["pretrain", "sft", "grpo", "student", "other"]'))
    outs = {}
    for jobs in (1, 2):
        outs[jobs] = str(tmp_path / f"jobs{jobs}")
        torch.set_num_threads(1)  # the workers of jobs = 2 get cores // 2 threads: the same on a 2-core machine
        T.main(["--config", str(tmp_path / "toy.toml"), "--out_dir", outs[jobs], "--train.eval_n=0",
                f"--pipeline.jobs={jobs}"])
    rows = {r["step"]: r for r in map(json.loads, open(os.path.join(outs[2], "pipeline.jsonl")))}
    assert set(rows) == {"pretrain", "sft", "grpo", "student", "other"}
    for step, needs in {"sft": "pretrain", "grpo": "sft", "student": "grpo"}.items():
        assert rows[step]["start"] >= rows[needs]["end"] - 0.5, (step, needs)  # 0.5 s: the poll's slack
    for name in rows:
        a, b = (load_file(os.path.join(outs[j], name, "final", "model.safetensors")) for j in (1, 2))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=f"{name} {k}")
    reps = [json.load(open(os.path.join(outs[j], "report.json"))) for j in (1, 2)]  # evaluated by 2 workers
    drop = lambda rows: [{k: v for k, v in r.items() if "wall" not in k and k != "with_init_s"} for r in rows]
    assert drop(reps[0]["rl"]) == drop(reps[1]["rl"]) and drop(reps[0]["distill"]) == drop(reps[1]["distill"])
    T.main(["--config", str(tmp_path / "toy.toml"), "--out_dir", outs[2], "--train.eval_n=0", "--pipeline.jobs=2",
            "--train.resume=true", "--pipeline.other.train.max_steps=3"])  # extend one step, in a worker
    rows = [json.loads(line) for line in open(os.path.join(outs[2], "pipeline.jsonl"))]
    assert [(r["step"], r.get("started", False)) for r in rows if r.get("extends")] == [("other", True),
                                                                                       ("other", False)]
    assert rows[-1]["step"] == "other" and rows[-1]["finished"]


def test_side_by_side_failure_names_the_step(tmp_path):
    (tmp_path / "empty").mkdir()  # a folder, so the config passes, that fails as a checkpoint once the step runs
    (tmp_path / "toy.toml").write_text(TOY.replace('init = "sft"', f'init = "{tmp_path / "empty"}"'))
    with pytest.raises(RuntimeError, match="pipeline step 'grpo' failed"):
        T.main(["--config", str(tmp_path / "toy.toml"), "--out_dir", str(tmp_path / "o"), "--train.eval_n=0",
                "--pipeline.jobs=2"])


def test_shipped_configs_load():
    import glob
    import pipeline
    paths = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "*.toml")))
    assert len(paths) >= 3
    for path in paths:
        cfg = T.load_config(path)
        if cfg.stage == "pipeline":
            steps = pipeline.pipeline_configs(cfg, T.RUNNERS)
            assert all(s.stage in T.RUNNERS for _, s in steps)
        else:
            assert cfg.stage in T.RUNNERS, path


@pytest.mark.parametrize("line, match", [
    ("typo = 3", r"\[pipeline\.report\] has unknown keys \['typo'\]"),
    ("k = [1, 4]", r"\[pipeline\.report\]\.k = \[1, 4\]: pass@k and maj@k need k <= n = 2"),
    ("k = [0]", r"\[pipeline\.report\]\.k = 0: must be an integer >= 1"),
    ("k = [2, 2]", r"\[pipeline\.report\]\.k = \[2, 2\]: each k once"),
    ("k = []", r"\[pipeline\.report\]\.k = \[\]: must be a list"),
    ("n = 0", r"\[pipeline\.report\]\.n = 0: must be an integer >= 1"),
    ("n_test = 2.5", r"\[pipeline\.report\]\.n_test = 2\.5: must be an integer >= 1"),
    ('rl = ["sft", "grop"]', r"\[pipeline\.report\]\.rl names step 'grop', which is not in \[pipeline\] steps"),
    ("distill = [3]", r"\[pipeline\.report\]\.distill = \[3\]: must be a list of step names"),
    ('zero = "sft"', r"\[pipeline\.report\]\.zero = 'sft': must name a grpo step"),
    ("max_new_tokens = 256", r"\[pipeline\.report\]\.max_new_tokens = 256: step 'sft'.s model has max_seq_len 256"),
])
def test_report_settings_are_checked_before_training(tmp_path, line, match):
    """A report setting the report could not be written with fails at config time, naming the key, not after
    every step has trained (the report runs last)."""
    head, table = TOY.split("[pipeline.report]\n")
    key = line.split(" =")[0]
    table = "".join(x + "\n" for x in table.splitlines() if x.split(" =")[0] != key)  # the line replaces its key's
    (tmp_path / "toy.toml").write_text(f"{head}[pipeline.report]\n{line}\n{table}")
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=match):
        T.main(["--config", str(tmp_path / "toy.toml"), "--out_dir", str(out)])
    assert not out.exists()  # nothing ran


def test_a_report_without_test_problems_fails_before_training(tmp_path):
    (tmp_path / "toy.toml").write_text(TOY)
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=r"\[pipeline\.report\]: data\.n_test = 0 leaves the report no test problems"):
        T.main(["--config", str(tmp_path / "toy.toml"), "--out_dir", str(out), "--data.n_test=0", "--train.eval_n=0"])
    assert not out.exists()  # nothing ran


def test_report_and_jobs_from_the_command_line(tmp_path):
    """CLI values are strings: "--pipeline.report.k=1,2" is the list [1, 2] (so is --pipeline.steps a list of
    names), "--pipeline.jobs=two" an error."""
    import pipeline
    (tmp_path / "toy.toml").write_text(TOY)
    cfg = T.load_config(str(tmp_path / "toy.toml"), ["--pipeline.report.k=1, 2", "--pipeline.report.n= 4",
                                                     "--pipeline.report.rl=sft,grpo",
                                                     "--pipeline.report.distill=grpo, student"])
    steps = pipeline.pipeline_configs(cfg, T.RUNNERS)
    spec = __import__("report").report_spec(cfg, steps)
    assert spec["k"] == [1, 2] and spec["n"] == 4 and spec["rl"] == ["sft", "grpo"] and spec["n_test"] == 3
    assert spec["distill"] == ["grpo", "student"]
    from config import positive_int
    with pytest.raises(ValueError, match=r"\[pipeline\]\.jobs = True: must be an integer >= 1"):
        positive_int(True, "[pipeline].jobs")  # a TOML `jobs = true` is no count
    cfg = T.load_config(str(tmp_path / "toy.toml"), ["--pipeline.steps=pretrain, sft,grpo,student"])
    assert [name for name, _ in pipeline.pipeline_configs(cfg, T.RUNNERS)] == ["pretrain", "sft", "grpo", "student"]
    cfg = T.load_config(str(tmp_path / "toy.toml"), ["--pipeline.jobs=two"])
    with pytest.raises(ValueError, match=r"\[pipeline\]\.jobs = 'two': must be an integer >= 1"):
        pipeline.pipeline_configs(cfg, T.RUNNERS)


def _children(pid):
    """Live child processes of pid, from /proc where there is one (cleanup only; [] elsewhere)."""
    out = []
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d))
    return out


def test_sigterm_stops_the_running_steps(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    slow = TINY.replace('stage = "pretrain"', 'stage = "pipeline"') + """
[pipeline]
steps = ["a", "b"]
jobs = 2
[pipeline.a]
stage = "pretrain"
train = {max_steps = 100000, eval_n = 0, log_every = 1}
[pipeline.b]
stage = "pretrain"
train = {max_steps = 100000, eval_n = 0, log_every = 1}
"""
    (tmp_path / "slow.toml").write_text(slow)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, os.path.join(root, "train.py"), "--config", str(tmp_path / "slow.toml"),
                             "--out_dir", str(tmp_path / "out")], cwd=root)
    logs = [tmp_path / "out" / n / "metrics.jsonl" for n in "ab"]
    workers = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not all(p.exists() and p.stat().st_size for p in logs):
            time.sleep(0.5)  # both steps are training and logging every step
        workers += _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
        time.sleep(1)
        sizes = [p.stat().st_size for p in logs]
        time.sleep(3)  # a worker left alive would still be logging a step every few ms
        assert [p.stat().st_size for p in logs] == sizes
        rows = [json.loads(r) for r in open(tmp_path / "out" / "pipeline.jsonl")]  # their time is kept
        ends = [r for r in rows if not r.get("started")]
        assert sorted(r["step"] for r in rows if r.get("started")) == ["a", "b"]
        assert sorted(r["step"] for r in ends) == ["a", "b"] and not any(r["finished"] for r in ends)
    finally:  # never leave a worker behind, whatever failed
        for pid in [proc.pid, *workers, *_children(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_step_walls_add_the_runs_a_resume_finished():
    import report
    rows = [{"step": "a", "wall_s": 10.0, "finished": False}, {"step": "b", "wall_s": 4.0},  # b: an old-style row
            {"step": "a", "wall_s": 5.0, "finished": True},
            {"step": "c", "wall_s": 3.0, "finished": True}, {"step": "c", "wall_s": 2.0, "finished": True}]  # redone
    assert report.step_walls(rows) == {"a": 15.0, "b": 4.0, "c": 2.0}
    rows += [{"step": "d", "wall_s": 6.0, "finished": True}, {"step": "d", "wall_s": 4.0, "finished": True,
                                                                "extends": True},  # max_steps raised: it goes on
             {"step": "e", "wall_s": 3.0, "finished": True}, {"step": "e", "wall_s": 2.0, "finished": False,
                                                                "extends": True},
             {"step": "e", "wall_s": 1.0, "finished": True, "extends": True}]
    assert report.step_walls(rows) == {"a": 15.0, "b": 4.0, "c": 2.0, "d": 10.0, "e": 6.0}
    rows.append({"step": "b", "wall_s": 7.0, "finished": True})  # after an old-style (finished) row: a new total
    assert report.step_walls(rows)["b"] == 7.0


@pytest.mark.parametrize("args, match", [
    (["--pipeline.sft=pretrain"], r"\[pipeline\.sft\] must be a table of the step's settings"),
    (["--pipeline.sft.out_dir=elsewhere"], r"\[pipeline\.sft\]\.out_dir: a step writes to out_dir/sft"),
])
def test_step_tables_are_checked(tmp_path, args, match):
    import pipeline
    (tmp_path / "toy.toml").write_text(TOY)
    with pytest.raises(ValueError, match=match):
        pipeline.pipeline_configs(T.load_config(str(tmp_path / "toy.toml"), args), T.RUNNERS)


def test_report_leaves_out_what_a_step_with_its_own_data_trained_on(tmp_path, monkeypatch):
    """The report tests every checkpoint on the base config's test split; a step whose [data] differs (here a
    smaller test split, so a larger training draw) can train on some of it: those problems are left out."""
    import pipeline
    import report
    import data as D
    (tmp_path / "toy.toml").write_text(TOY)
    cfg = T.load_config(str(tmp_path / "toy.toml"), ["--pipeline.sft.data.n_test=2", "--pipeline.report.n_test=20",
                                                     "--out_dir", str(tmp_path / "o")])
    steps = pipeline.pipeline_configs(cfg, T.RUNNERS)
    test = [p["question"] for p in D.load_problems(cfg.data, "test")]
    seen = report.trained_questions(cfg, steps)
    assert 0 < len(seen & set(test)) < len(test)
    assert not report.trained_questions(T.load_config(str(tmp_path / "toy.toml")),
                                        pipeline.pipeline_configs(T.load_config(str(tmp_path / "toy.toml")),
                                                                  T.RUNNERS))  # same [data] everywhere: none
    asked = []
    monkeypatch.setattr(report, "evaluate_all", lambda calls, jobs: [asked.append(c[1]) or {"greedy": 0.0, "params": 1}
                                                                     for c in calls])
    monkeypatch.setattr(report, "plot_curves", lambda *a, **k: False)
    os.makedirs(cfg.out_dir)
    rep = report.write_report(cfg, steps)
    kept = [p["question"] for p in asked[0]]
    assert kept == [q for q in test if q not in seen] and rep["n_test"] == len(kept)
    assert rep["left_out"] == len(test) - len(kept) > 0


def test_a_skipped_finished_step_names_the_keys_that_changed(tmp_path, capsys):
    import dataclasses
    import pipeline
    (tmp_path / "toy.toml").write_text(TOY)
    (_, ran), = [x for x in pipeline.pipeline_configs(T.load_config(str(tmp_path / "toy.toml")), T.RUNNERS)
                 if x[0] == "sft"]
    rows = [{"step": "sft", "finished": False, "config": json.loads(json.dumps(dataclasses.asdict(ran)))}]
    (_, now), = [x for x in pipeline.pipeline_configs(T.load_config(str(tmp_path / "toy.toml"), ["--model.dim=64"]),
                                                       T.RUNNERS) if x[0] == "sft"]
    pipeline.warn_if_changed([{"step": "sft", "finished": True, "config": rows[0]["config"] | {"init": "x"}}] + rows,
                             "sft", ran)  # finished: the run that finished it counts, not a newer unfinished one
    assert "is finished, so the resumed pipeline skips it, but its config has changed since it ran (init)" \
        in capsys.readouterr().out
    pipeline.warn_if_changed(rows, "sft", now)  # no finished row (killed after `final`): the newest run's config
    assert "is finished, so the resumed pipeline skips it, but its config has changed since it ran (model.dim)" \
        in capsys.readouterr().out
    pipeline.warn_if_changed(rows, "sft", ran)  # unchanged: quiet
    assert capsys.readouterr().out == ""



def test_an_interrupted_step_without_a_checkpoint_starts_over_without_a_warning(tmp_path, capsys):
    """Killed before its first checkpoint, a step has nothing to go on from: a changed config is simply used."""
    import dataclasses
    import pipeline
    from test_train import TINY
    (tmp_path / "p.toml").write_text(TINY.replace('stage = "pretrain"', 'stage = "pipeline"') +
                                     '[pipeline]\nsteps = ["pretrain"]\n[pipeline.pretrain]\ntrain = {max_steps = 1}\n')
    out = tmp_path / "o"
    args = ["--config", str(tmp_path / "p.toml"), "--out_dir", str(out), "--train.eval_n=0"]
    (_, ran), = pipeline.pipeline_configs(T.load_config(str(tmp_path / "p.toml"), args[2:]), T.RUNNERS)
    os.makedirs(out / "pretrain")  # the step's folder, with no checkpoint in it
    row = {"step": "pretrain", "started": True, "wall_s": 0.0, "finished": False,
           "config": json.loads(json.dumps(dataclasses.asdict(ran)))}
    (out / "pipeline.jsonl").write_text(json.dumps(row) + "\n")
    capsys.readouterr()
    T.main(args + ["--train.resume=true", "--pipeline.pretrain.train.lr=0.01"])
    assert "warning" not in capsys.readouterr().out
    assert os.path.exists(out / "pretrain" / "final" / "model.safetensors")


WORKER = """
import multiprocessing, os, sys, time
sys.path.insert(0, {root!r})
import pipeline


def runner(marker):
    open(marker, "w").close()  # the worker is in its step
    time.sleep(120)


if __name__ == "__main__":
    proc = multiprocessing.get_context("spawn").Process(target=pipeline._run_step,
                                                          args=(runner, {marker!r}, 1, os.getpid()))
    proc.start()
    print(proc.pid, flush=True)
    time.sleep(120)
"""


def test_a_worker_ends_with_its_killed_pipeline(tmp_path):
    """SIGKILL gives the pipeline process no chance to stop its workers: each ends by itself when its parent is
    gone, so a resumed pipeline never shares a step folder with an orphan still training there."""
    import signal
    import subprocess
    import sys
    import time
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    marker = tmp_path / "in_step"
    (tmp_path / "parent.py").write_text(WORKER.format(root=root, marker=str(marker)))
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    try:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert marker.exists() and alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not alive(worker)
    finally:
        for pid in (parent.pid, worker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_zero_curve_spans_the_run_evenly():
    import report
    rows = [{"step": 0, "eval/accuracy": 0.0}] + [  # an eval-only row (no reward_mean) is skipped
        {"step": s, "reward_mean": 0.1, "accuracy_mean": s / 100, "format_rate": s / 200, "completion_len": s}
        for s in range(1, 12)]
    curve = report.zero_curve(rows)  # 11 GRPO rows, 6 points: every second row, first and last included
    assert [c["step"] for c in curve] == [1, 3, 5, 7, 9, 11]
    assert curve[-1] == {"step": 11, "accuracy": 0.11, "format_rate": 0.055, "completion_len": 11}
    assert [c["step"] for c in report.zero_curve(rows[:3])] == [1, 2]  # fewer rows than points: each once
