"""
The report of a finished pipeline (pipeline.py): out_dir/report.json, report.md and training-curve plots.

Configured by the [pipeline.report] table, each key naming pipeline steps:
    rl      = ["sft", "grpo"]        DeepSeekMath's RL finding: greedy pass@1, pass@k and maj@k of each checkpoint
    distill = ["grpo", "student"]    DeepSeek-R1's distillation finding: parameters, wall time, greedy accuracy
    zero    = "r1zero"               R1-Zero-style run: format rate, accuracy, completion length over training
    n = 16, k = [1, 4, 16]           defaults; n_test and max_new_tokens: data.n_test, train.max_new_tokens
Every accuracy is measured here on the held-out test split; nothing is copied from a training log except the
R1-Zero curve, which is the training log by definition, and the wall times, which come from pipeline.jsonl. Plots
need the optional matplotlib.
"""

import dataclasses
import json
import multiprocessing
import os
import time

import torch

import config as C
import data as D
import eval as E
from checkpoint import read_jsonl
from model import ModelConfig


def evaluate_step(ckpt, problems, spec, sampled, device):
    """Greedy accuracy (and pass@k / maj@k when `sampled`) of one checkpoint, in its own training template."""
    model, tok, run_cfg = E.load_checkpoint(ckpt, device)
    template = run_cfg.get("data", {}).get("template", "plain")
    longest = max(len(p) for p in E.encode_prompts(tok, problems, template))
    if longest + spec["max_new_tokens"] > model.cfg.max_seq_len:
        raise ValueError(f"[pipeline.report].max_new_tokens = {spec['max_new_tokens']}: with the longest test prompt "
                         f"({longest} tokens) it exceeds {ckpt}'s max_seq_len {model.cfg.max_seq_len}")
    with E.autocast(device, E.run_bf16(run_cfg)):  # the run's precision, as its metrics.jsonl evaluations used
        greedy, _ = E.greedy_eval(model, tok, problems, template, spec["max_new_tokens"], desc=f"greedy {ckpt}")
        row = {"params": model.num_params(), "greedy": greedy["accuracy"], "format_rate": greedy["format_rate"],
               "mean_len": greedy["mean_len"]}
        if sampled:
            gen = torch.Generator(device=device).manual_seed(0)
            metrics, _ = E.sampled_eval(model, tok, problems, template, spec["n"], spec["k"],
                                        spec["max_new_tokens"], generator=gen)
            row.update(metrics)
    return row


def evaluate_all(calls, jobs):
    """evaluate_step over a list of argument tuples; with jobs > 1 in that many worker processes (CPU)."""
    if jobs <= 1:
        return [evaluate_step(*args) for args in calls]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs, initializer=torch.set_num_threads, initargs=(max(1, (os.cpu_count() or 1) // jobs),)) as pool:
        rows = pool.starmap(evaluate_step, calls)
        pool.close()  # workers exit on their own rather than being terminated
        pool.join()
    return rows


def init_chain(name, steps):
    """The step and the earlier steps it was initialised from, in turn (a distilled student's teacher is not
    among them: it is an input, like a dataset)."""
    by_final = {os.path.join(step.out_dir, "final"): n for n, step in steps}
    cfgs, chain = dict(steps), [name]
    while cfgs[chain[-1]].init in by_final:
        chain.append(by_final[cfgs[chain[-1]].init])
    return chain


def context_length(name, steps):
    """The max_seq_len step `name`'s checkpoint will have: that of the model its init chain starts from (the first
    step's own [model], or an outside checkpoint's config.json); None when it cannot be read yet."""
    root = dict(steps)[init_chain(name, steps)[-1]]
    return folder_context(root.init) if root.init else root.model.max_seq_len


def folder_context(folder):
    """The max_seq_len of checkpoint folder's config.json; None when it cannot be read (the stage will say why)."""
    try:
        return ModelConfig.load_hf(folder).max_seq_len  # HF's keys and defaults, as the stage reads them
    except (OSError, ValueError):
        return None


def trained_questions(cfg, steps):
    """The training questions of the steps whose [data] settings differ from the base config's: the report's test
    split is the base config's, which only the base config's own training split is sure to leave out."""
    base, seen = dataclasses.asdict(cfg.data), set()
    for _, step in steps:
        if dataclasses.asdict(step.data) != base:
            seen |= {p["question"] for p in D.load_problems(step.data, "train")}
    return seen


def zero_curve(metrics, points=6):
    """A few evenly spaced rows of an R1-Zero-style GRPO log: accuracy, format rate, completion length."""
    rows = [r for r in metrics if "reward_mean" in r]
    if not rows:
        return []
    idx = sorted({round(i * (len(rows) - 1) / (points - 1)) for i in range(points)})
    return [{"step": rows[i]["step"], "accuracy": rows[i]["accuracy_mean"], "format_rate": rows[i]["format_rate"],
             "completion_len": rows[i]["completion_len"]} for i in idx]


def md_table(rows, cols):
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    return head + "".join("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |\n" for r in rows)


def plot_curves(out_dir, steps, path):
    """reward/accuracy, KL and completion length of the GRPO steps, loss of the distill steps: one PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    panels = [("reward_ema", "reward (EMA) / held-out greedy accuracy"), ("kl", "k3 KL to the reference"),
              ("completion_len", "completion length (tokens)"), ("loss", "distillation loss")]
    for name, stage in steps:
        rows = read_jsonl(os.path.join(out_dir, name, "metrics.jsonl"))
        for ax, (key, title) in zip(axes, panels):
            if (stage == "distill") != (key == "loss"):
                continue
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=name)
            evals = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
            if key == "reward_ema" and evals and stage == "grpo":
                ax.plot(*zip(*evals), "o--", label=f"{name} held-out")
            ax.set_title(title)
            ax.set_xlabel("step")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def step_walls(rows):
    """{step: seconds} from pipeline.jsonl's rows: a finished run plus the unfinished runs it resumed and the runs
    that extended it (a row without "finished" is a finished run of an earlier version). A step run again from
    scratch (its folder removed) starts a new total. A run killed with SIGKILL left only its "started" row: its
    time is not known, and a step with no other row has none (the report shows nan)."""
    wall, done = {}, {}
    for r in rows:
        name = r["step"]
        goes_on = not done.get(name, True) or r.get("extends", False)
        if r.get("started"):  # a run began (pipeline.log_step): it goes on with the unfinished total or starts anew
            if not goes_on:
                wall.pop(name, None)
            done[name] = False
            continue
        wall[name] = (wall.get(name, 0.0) if goes_on else 0.0) + r["wall_s"]
        done[name] = r.get("finished", True)
    return wall


def report_spec(cfg, steps):
    """The [pipeline.report] table with its defaults filled in, checked against the pipeline's steps (name, Config)
    before anything trains: a ValueError names the first key that the report could not be written with. Values
    set on the command line arrive as strings: "4" is read as 4, and "sft,grpo" as a list."""
    spec = cfg.pipeline.get("report", {})
    if not isinstance(spec, dict):
        raise ValueError(f"[pipeline.report] must be a table, got {spec!r}")
    defaults = {"rl": [], "distill": [], "zero": "", "n": 16, "k": [1, 4, 16], "n_test": cfg.data.n_test,
                "max_new_tokens": cfg.train.max_new_tokens}
    unknown = set(spec) - set(defaults)
    if unknown:
        raise ValueError(f"[pipeline.report] has unknown keys {sorted(unknown)}; valid: {sorted(defaults)}")
    spec = {**defaults, **spec}
    for key in ("rl", "distill", "k"):  # a CLI string is a comma-separated list
        if isinstance(spec[key], str):
            spec[key] = [x.strip() for x in spec[key].split(",") if x.strip()]
    if not cfg.data.test_file and cfg.data.n_test == 0:  # the report evaluates on the base config's test split
        raise ValueError("[pipeline.report]: data.n_test = 0 leaves the report no test problems; set data.n_test "
                         "(or data.test_file)")
    for key in ("n", "n_test", "max_new_tokens"):
        spec[key] = C.positive_int(spec[key], f"[pipeline.report].{key}")
    k = spec["k"]
    if not (isinstance(k, list) and k):
        raise ValueError(f"[pipeline.report].k = {k!r}: must be a list of integers in [1, n]")
    spec["k"] = [C.positive_int(x, "[pipeline.report].k") for x in k]
    if len(set(spec["k"])) < len(spec["k"]):
        raise ValueError(f"[pipeline.report].k = {k!r}: each k once")
    if max(spec["k"]) > spec["n"]:
        raise ValueError(f"[pipeline.report].k = {k!r}: pass@k and maj@k need k <= n = {spec['n']} samples")
    stage_of = dict((name, s.stage) for name, s in steps)
    for key in ("rl", "distill"):
        names = spec[key]
        if not (isinstance(names, list) and all(isinstance(x, str) for x in names)):
            raise ValueError(f"[pipeline.report].{key} = {names!r}: must be a list of step names")
        for name in names:
            if name not in stage_of:
                raise ValueError(f"[pipeline.report].{key} names step {name!r}, which is not in [pipeline] steps")
    zero = spec["zero"]
    if not isinstance(zero, str) or (zero and stage_of.get(zero) != "grpo"):
        raise ValueError(f"[pipeline.report].zero = {zero!r}: must name a grpo step of [pipeline] steps, or be \"\"")
    for name in dict.fromkeys(spec["rl"] + spec["distill"]):
        context = context_length(name, steps)
        if context is not None and spec["max_new_tokens"] >= context:
            raise ValueError(f"[pipeline.report].max_new_tokens = {spec['max_new_tokens']}: step {name!r}'s model "
                             f"has max_seq_len {context}, which must hold the prompt too")
    return spec


def write_report(cfg, steps):
    """Evaluate the checkpoints [pipeline.report] names and write report.json / report.md / plots.png in out_dir."""
    spec = report_spec(cfg, steps)
    stage_of = dict((name, s.stage) for name, s in steps)
    t0, device = time.time(), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problems = D.load_problems(cfg.data, "test")[: spec["n_test"]]
    seen = trained_questions(cfg, steps)  # a step with data settings of its own may have trained on some of them
    held = [p for p in problems if p["question"] not in seen]
    if len(held) < len(problems):
        print(f"report: {len(problems) - len(held)} of the {len(problems)} test problems are training questions of a "
              "step with [data] settings of its own; they are left out")
    if not held:
        raise ValueError("report: every test problem is a training question of some step; change the steps' [data]")
    problems, n_left_out = held, len(problems) - len(held)
    wall = step_walls(read_jsonl(os.path.join(cfg.out_dir, "pipeline.jsonl")))
    wall = {name: s for name, s in wall.items() if name in stage_of}  # not the steps this run left out
    for name in spec["distill"]:
        if name not in wall:
            print(f"report: {os.path.join(cfg.out_dir, 'pipeline.jsonl')} has no wall time for step {name!r}; "
                  "its wall_s is nan")
    zero_rows = []  # read before the evaluations, so that a bad log fails fast
    if spec["zero"]:
        zero_log = os.path.join(cfg.out_dir, spec["zero"], "metrics.jsonl")
        zero_rows = read_jsonl(zero_log)
        if not zero_rows:
            print(f"report: {zero_log} has no rows; the R1-Zero section is left out")
    final = lambda name: os.path.join(cfg.out_dir, name, "final")
    rep = {"n_test": len(problems), "left_out": n_left_out, "wall_s": wall, "rl": [], "distill": [], "zero": []}
    todo = [(name, True) for name in spec["rl"]] + [(n, False) for n in spec["distill"] if n not in spec["rl"]]
    jobs = C.positive_int(cfg.pipeline.get("jobs", 1), "[pipeline].jobs") if device.type == "cpu" else 1
    rows = dict(zip([name for name, _ in todo], evaluate_all(
        [(final(name), problems, spec, sampled, device) for name, sampled in todo], jobs)))
    rep["rl"] = [{"step": name, **rows[name]} for name in spec["rl"]]
    for name in spec["distill"]:
        rep["distill"].append({"step": name, **rows[name], "wall_s": wall.get(name, float("nan")),
                               "with_init_s": sum(wall.get(n, float("nan")) for n in init_chain(name, steps))})
    rep["eval_s"] = time.time() - t0
    if zero_rows:
        rep["zero"] = zero_curve(zero_rows)
    D.write_atomic(os.path.join(cfg.out_dir, "report.json"), json.dumps(rep, indent=2).encode())

    ks = [f"{m}@{k}" for m in ("pass", "maj") for k in spec["k"]]
    test_set = f"test problems of {cfg.data.test_file}" if cfg.data.test_file else "synthetic test problems"
    left_out = f" ({n_left_out} more left out: training questions of a step)" if n_left_out else ""
    md = [f"# r1-mini pipeline report\n\nHeld-out {test_set}: {len(problems)}{left_out}. "
          f"Wall time per step (s): {', '.join(f'{k} {v:.0f}' for k, v in wall.items())}; "
          f"this report's evaluations {rep['eval_s']:.0f}.\n"]
    if rep["rl"]:
        md.append(f"## RL sharpens the distribution (DeepSeekMath 5.2)\n\n{spec['n']} samples per problem.\n\n"
                  + md_table(rep["rl"], ["step", "greedy"] + ks))
    if rep["distill"]:
        md.append("## Distillation versus RL on the small model (DeepSeek-R1)\n\n"
                  + "wall_s: the step itself; with_init_s: plus the steps it was initialised from.\n\n"
                  + md_table(rep["distill"], ["step", "params", "wall_s", "with_init_s", "greedy"]))
    if rep["zero"]:
        md.append(f"## R1-Zero-style GRPO from the pretrained model ({spec['zero']})\n\n"
                  + md_table(rep["zero"], ["step", "accuracy", "format_rate", "completion_len"]))
    if plot_curves(cfg.out_dir, steps=[(n, stage_of[n]) for n in stage_of], path=os.path.join(cfg.out_dir, "plots.png")):
        md.append("![training curves](plots.png)\n")
    else:
        md.append("Plots: `pip install matplotlib`, then re-run with `--train.resume=true` (finished steps are kept).\n")
        print("report: matplotlib is not installed; `pip install matplotlib` for the plots")
    D.write_atomic(os.path.join(cfg.out_dir, "report.md"), "\n".join(md).encode())
    return rep
