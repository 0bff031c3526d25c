"""
Multi-stage runs for r1-mini (`stage = "pipeline"` in a train.py config): a list of named steps run in order,
each one a normal stage (pretrain, sft, grpo, distill) in its own folder out_dir/NAME with its own checkpoints
and metrics. [pipeline.NAME] holds the step's overrides of the base config; `init = "EARLIER_STEP"` starts a
step from that step's final checkpoint.

    [pipeline]
    steps = ["sft", "grpo"]
    jobs = 2           # optional: run up to 2 independent steps side by side (one process each)
    [pipeline.grpo]
    init = "sft"
    train = {max_steps = 200, lr = 1e-4}

Settings, weakest first: the file's top level, the step's table, the command line's top-level keys (so
`--train.max_steps=5` shortens every step), the command line's --pipeline.NAME.* keys. An `init` or
`distill.teacher` on the command line does not replace a step's own (an error): set it per step.

A step depends on the steps its `init` and `distill.teacher` name. With jobs = N > 1 each step runs in its own
process as soon as the steps it depends on are done (earlier in `steps` first), with cores / N threads. On the
2-core machine the demo's teacher trains ~1.8x slower on one thread than on two, but the demo's seven steps, whose
wall times add up to 19.5 minutes at one thread each, finish in 11.3 minutes with jobs = 2 (measured).
"""

import copy
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time

import torch

import report
from checkpoint import changed_keys, final_step, prepare_out_dir, read_jsonl, recover_final
from config import apply_table, merge_tables, positive_int


def pipeline_configs(cfg, runners):
    """One Config per pipeline step: the base config plus the step's table, checked before anything runs.
    --pipeline.steps=a,b on the command line runs some of the file's steps: a step it leaves out keeps its results
    of an earlier run (out_dir/NAME/final) for the steps that start from it, and the report leaves it out."""
    steps = cfg.pipeline.get("steps")
    if isinstance(steps, str):  # from the command line: --pipeline.steps=sft,grpo
        steps = [s.strip() for s in steps.split(",") if s.strip()]
    unknown = set(cfg.pipeline) - {"steps", "report", "jobs"} - set(steps or [])
    picked = "steps" in (getattr(cfg, "cli_overrides", {}).get("pipeline") or {})
    if unknown and not picked:  # in the file, a table of no step is a typo
        raise KeyError(f"[pipeline] has tables for steps not in `steps`: {sorted(unknown)}")
    earlier = {name: os.path.join(cfg.out_dir, name, "final") for name in unknown} if picked else {}
    if picked and isinstance(cfg.pipeline.get("report"), dict) and isinstance(steps, list):
        rep = cfg.pipeline["report"]  # the report evaluates the picked steps only
        for key in ("rl", "distill"):
            if isinstance(rep.get(key), list):
                rep[key] = [x for x in rep[key] if x in steps]
        if rep.get("zero") not in steps:
            rep["zero"] = ""
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise ValueError("stage = 'pipeline' needs [pipeline] steps = [\"name\", ...]")
    out, dirs = [], {}
    for name in steps:
        if name in dirs:
            raise ValueError(f"[pipeline] steps names {name!r} twice")
        table = cfg.pipeline.get(name, {})
        if not isinstance(table, dict):
            raise ValueError(f"[pipeline.{name}] must be a table of the step's settings (e.g. [pipeline.{name}] "
                             f"train = {{max_steps = 100}}), got {table!r}")
        if "out_dir" in table:
            raise ValueError(f"[pipeline.{name}].out_dir: a step writes to out_dir/{name}; set out_dir at the top "
                             "level (or on the command line) for the whole pipeline")
        table = dict(table)
        step = copy.deepcopy(cfg)
        step.pipeline = {}
        step.stage = name  # a step named after a stage needs no `stage` key
        try:
            apply_table(step, table, "", cli=True)
            # the command line beats the config file: its top-level keys apply over the step's table (so
            # --train.max_steps=5 shortens every step), and its --pipeline.NAME.* keys over those
            apply_table(step, cli_over_step(cfg, name, table), "", cli=True)
        except (KeyError, TypeError, ValueError) as e:
            raise type(e)(f"[pipeline.{name}]: {e.args[0]}") from None
        if step.stage not in runners or step.stage == "pipeline":
            if name not in cfg.pipeline:  # no table of its own: the name itself was read as the stage
                tables = sorted(set(cfg.pipeline) - {"steps", "report", "jobs"})
                raise ValueError(f"[pipeline] step {name!r} has no [pipeline.{name}] table and is not a stage; "
                                 f"steps with tables: {tables}; stages: {sorted(set(runners) - {'pipeline'})}")
            raise ValueError(f"[pipeline.{name}]: unknown stage {step.stage!r}; valid: {sorted(runners)}")
        known = {**earlier, **dirs}  # an earlier step's name means its final checkpoint
        step.init = known.get(step.init, step.init)
        step.distill.teacher = known.get(step.distill.teacher, step.distill.teacher)
        for key, value in (("init", step.init), ("distill.teacher", step.distill.teacher)):
            if value and value not in dirs.values() and not os.path.isdir(value):  # a typo: say so before training
                raise ValueError(f"[pipeline.{name}]: {key} = {value!r} is neither an earlier step of `steps` "
                                 "nor a folder")
        step.out_dir = os.path.join(cfg.out_dir, name)
        dirs[name] = os.path.join(step.out_dir, "final")
        out.append((name, step))
    positive_int(cfg.pipeline.get("jobs", 1), "[pipeline].jobs")
    if "report" in cfg.pipeline:
        report.report_spec(cfg, out)
    return out


def check_steps(cfg, runners, check):
    """Every step's settings, before the first one trains: check (train.check_config) on each step, and new-token
    budgets that leave room for a prompt in the context of each model that samples them (evaluation's, GRPO's
    rollouts, a distillation teacher's samples, which the student then trains on). A ValueError names the step."""
    steps = pipeline_configs(cfg, runners)
    finals = {os.path.join(step.out_dir, "final"): n for n, step in steps}
    for name, step in steps:
        try:
            check(step)
            context = report.context_length(name, steps)  # its model's, when it can be read before training
            budgets = [("train.max_new_tokens", step.train.max_new_tokens, "the model's", context)]
            if step.stage == "grpo":
                budgets.append(("grpo.max_new_tokens", step.grpo.max_new_tokens, "the model's", context))
            dc = step.distill
            if step.stage == "distill" and (dc.mode == "traces" or dc.source == "teacher"):
                teacher = (report.context_length(finals[dc.teacher], steps) if dc.teacher in finals
                           else report.folder_context(dc.teacher))
                budgets += [("distill.max_new_tokens", dc.max_new_tokens, "the student's", context),
                            ("distill.max_new_tokens", dc.max_new_tokens, "the teacher's", teacher)]
            for key, budget, whose, length in budgets:
                if length is not None and budget >= length:
                    raise ValueError(f"{key} = {budget} leaves no room for a prompt in {whose} max_seq_len {length}")
        except ValueError as e:
            raise ValueError(f"[pipeline.{name}]: {e}") from None


def cli_over_step(cfg, name, table):
    """The command line's settings for step `name`, to apply over its table (the step's settings from the file):
    the top-level overrides, then the step's own --pipeline.NAME.* ones. Not carried over: stage and out_dir (the
    pipeline's own), and an init or distill.teacher that the step's table sets (an error: it would rewire the
    pipeline, so it is set per step)."""
    cli = getattr(cfg, "cli_overrides", {})  # config.load_config's parse of the command line
    top = {k: v for k, v in cli.items() if k not in ("pipeline", "stage", "out_dir")}
    own = cli.get("pipeline", {}).get(name, {})
    own = own if isinstance(own, dict) else {}
    for key, mine, per_step in (("init", table.get("init"), own.get("init")),
                                ("distill.teacher", (table.get("distill") or {}).get("teacher"),
                                 (own.get("distill") or {}).get("teacher"))):
        section, _, leaf = key.rpartition(".")
        given = (top.get(section) or {}).get(leaf) if section else top.get(leaf)
        if given is not None and mine is not None and per_step is None:  # a per-step value wins, as merged below
            raise ValueError(f"--{key}={given} on the command line would replace the step's own {key} = {mine!r}; "
                             f"set it for this step alone: --pipeline.{name}.{key}=...")
    return merge_tables(top, own)


def _exit(signum, frame):
    raise SystemExit(128 + signum)


def run_pipeline(cfg, runners, writer=True):
    """Run the steps in dependency order: one at a time, or up to [pipeline] jobs at once in worker processes.
    With --train.resume=true a finished step is skipped (with a warning naming the keys, if its config has changed
    since it ran), one whose train.max_steps was raised is extended, and an interrupted one continues from its
    newest checkpoint. Wall time per step goes to out_dir/pipeline.jsonl. writer: this process writes
    pipeline.jsonl and the report (under torchrun only rank 0 does; every rank trains, one step at a time)."""
    steps = pipeline_configs(cfg, runners)
    os.makedirs(cfg.out_dir, exist_ok=True)
    rows = read_jsonl(os.path.join(cfg.out_dir, "pipeline.jsonl")) if writer else []  # the runs so far
    todo = []
    ended = {}  # step -> the step its `final` was written at, None if it has none
    for name, step in steps:  # finished: resumed, and `final` is at the step's max_steps (a higher one extends it)
        recover_final(step.out_dir)
        ended[name] = final_step(step.out_dir)
        if not (cfg.train.resume and ended[name] is not None and ended[name] >= step.train.max_steps):
            todo.append((name, step))  # one that goes on from a checkpoint warns of a changed config as it starts
        elif writer:
            warn_if_changed(rows, name, step)
    again, after = {name for name, _ in todo}, dependencies(steps)
    for name, step in steps:  # a finished step whose source is being redone keeps the old source's results
        if name not in again and after[name] & again and writer:
            print(f"warning: pipeline step {name!r} is finished and skipped, but {sorted(after[name] & again)}, which "
                  f"it starts from, runs again; remove {step.out_dir} to redo it too")
    jobs = positive_int(cfg.pipeline.get("jobs", 1), "[pipeline].jobs")
    if not cfg.train.resume:  # what each step would refuse when it starts, said before any step runs or is timed
        for name, step in todo:
            try:
                prepare_out_dir(step)
            except FileExistsError as e:
                raise FileExistsError(f"pipeline step {name!r}: {e}. A pipeline re-run with --train.resume=true "
                                      "keeps its finished steps and goes on with the others") from None
    extends = {name for name, _ in todo if ended[name] is not None}  # their wall time adds to the finished run's
    # SIGTERM (kill, timeout, a job scheduler) becomes SystemExit, so the cleanup below runs: side_by_side's
    # workers, left alive, would go on writing the step folders that a resumed pipeline writes
    on_term = signal.signal(signal.SIGTERM, _exit)
    try:
        if jobs > 1 and writer and not torch.distributed.is_initialized():
            side_by_side(cfg, todo, runners, jobs, extends)
        else:
            for name, step in todo:
                t0 = time.time()
                if writer:
                    log_step(cfg, name, step, t0, False, name in extends, started=True)
                try:
                    runners[step.stage](copy.deepcopy(step))  # a stage fills in its config (model, tokenizer)
                except BaseException:
                    if writer:  # the time spent counts when the step is resumed
                        log_step(cfg, name, step, t0, False, name in extends)
                    raise
                if writer:
                    log_step(cfg, name, step, t0, True, name in extends)
    finally:
        signal.signal(signal.SIGTERM, on_term)
    if "report" in cfg.pipeline and writer:
        report.write_report(cfg, steps)


def dependencies(steps):
    """{name: the earlier steps it starts from}: those whose final checkpoint is its init or its teacher."""
    final = {os.path.join(step.out_dir, "final"): name for name, step in steps}
    return {name: {final[p] for p in (step.init, step.distill.teacher) if p in final} for name, step in steps}


def log_step(cfg, name, step, t0, finished=True, extends=False, started=False):
    """A row of pipeline.jsonl: a step that stopped (failed, killed with SIGTERM) logs its time unfinished, and
    report.step_walls adds it to the time of the run that resumes and finishes it; so it does for the time of a
    run that `extends` a finished step (train.max_steps raised). started: the row a run writes as it begins, so
    that a run killed with SIGKILL (no row of its end) still leaves its config for warn_if_changed."""
    row = {"step": name, "stage": step.stage, "wall_s": 0.0 if started else time.time() - t0, "start": t0,
           "end": time.time(), "finished": finished, **({"extends": True} if extends else {}),
           **({"started": True} if started else {})}
    row["config"] = dataclasses.asdict(step)  # what a resumed pipeline compares before it skips or goes on
    path = os.path.join(cfg.out_dir, "pipeline.jsonl")
    with open(path, "ab") as f:
        if f.tell():  # a last line cut short by a kill (read_jsonl leaves it out): cut it off first
            with open(path, "rb") as g:
                g.seek(-1, os.SEEK_END)
                if g.read(1) != b"\n":
                    g.seek(0)
                    f.truncate(g.read().rfind(b"\n") + 1)
        f.write((json.dumps(row) + "\n").encode())


def warn_if_changed(rows, name, step):
    """A resumed pipeline skips a finished step even when the step's config has changed since it ran (rows:
    pipeline.jsonl): say which keys. (A step that goes on from a checkpoint says so itself: train.start_run.)"""
    ran = [r for r in rows if r.get("step") == name and "config" in r]
    # the config of the run that finished it; with no such row (killed between writing `final` and its end row),
    # the newest run's, which wrote that `final`
    ran = [r["config"] for r in [r for r in ran if r.get("finished")] or ran]
    if ran:
        keys = changed_keys(ran[-1], json.loads(json.dumps(dataclasses.asdict(step))))
        if keys:
            print(f"warning: pipeline step {name!r} is finished, so the resumed pipeline skips it, but its config has "
                  f"changed since it ran ({', '.join(keys)}); remove {step.out_dir} to run it again")


def _run_step(runner, step, threads, parent):
    """A worker's life: one step. It ends with the pipeline process, killed or not (SIGKILL gives the parent no
    chance to stop it): an orphan would go on writing the step folder that a resumed pipeline writes too."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)  # as if killed with its parent: the step's last complete checkpoint stays the one to resume
    threading.Thread(target=watch, daemon=True).start()
    torch.set_num_threads(threads)
    runner(step)


def side_by_side(cfg, todo, runners, jobs, extends=frozenset()):
    """Up to `jobs` steps at once, each in a fresh process; a step starts when the steps it names are done.
    A failed step, or SIGTERM (see run_pipeline), stops the others; a failed step raises, naming it (its own
    traceback is printed above)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    configs, after = dict(todo), dependencies(todo)
    waiting, pending, running = list(configs), set(configs), {}  # running: name -> (process, step, start time)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    try:
        while waiting or running:
            for name in [n for n in waiting if not pending & after[n]][: jobs - len(running)]:
                step = configs[name]
                proc = ctx.Process(target=_run_step, args=(runners[step.stage], step, threads, os.getpid()), name=name)
                proc.start()
                running[name] = (proc, step, time.time())
                log_step(cfg, name, step, running[name][2], False, name in extends, started=True)
                waiting.remove(name)
            multiprocessing.connection.wait([proc.sentinel for proc, _, _ in running.values()])
            for name, (proc, step, t0) in list(running.items()):
                if proc.exitcode is None:
                    continue
                del running[name]
                if proc.exitcode != 0:
                    log_step(cfg, name, step, t0, False, name in extends)
                    raise RuntimeError(f"pipeline step {name!r} failed (exit code {proc.exitcode}); finished steps "
                                       "are kept: fix it and re-run with --train.resume=true")
                pending.discard(name)
                log_step(cfg, name, step, t0, True, name in extends)
    finally:
        for name, (proc, step, t0) in running.items():
            proc.terminate()
            proc.join()
            log_step(cfg, name, step, t0, False, name in extends)
