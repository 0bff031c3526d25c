"""
Multi-stage runs for r1-mini (`stage = "pipeline"` in a train.py config): a list of named steps run in order,
each one a normal stage (pretrain, sft, grpo, distill) in its own folder out_dir/NAME with its own checkpoints
and metrics. [pipeline.NAME] holds the step's overrides of the base config; `init = "EARLIER_STEP"` starts a
step from that step's final checkpoint.

    [pipeline]
    steps = ["sft", "grpo"]
    [pipeline.grpo]
    init = "sft"
    train = {max_steps = 200, lr = 1e-4}
"""

import copy
import json
import os
import time

import report
from config import apply_table


def pipeline_configs(cfg, runners):
    """One Config per pipeline step: the base config plus the step's table, checked before anything runs."""
    steps = cfg.pipeline.get("steps")
    unknown = set(cfg.pipeline) - {"steps", "report"} - set(steps or [])
    if unknown:
        raise KeyError(f"[pipeline] has tables for steps not in `steps`: {sorted(unknown)}")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise ValueError("stage = 'pipeline' needs [pipeline] steps = [\"name\", ...]")
    out, dirs = [], {}
    for name in steps:
        table = dict(cfg.pipeline.get(name, {}))
        step = copy.deepcopy(cfg)
        step.pipeline = {}
        step.stage = name  # a step named after a stage needs no `stage` key
        try:
            apply_table(step, table, "", cli=True)
        except (KeyError, TypeError) as e:
            raise type(e)(f"[pipeline.{name}]: {e.args[0]}") from None
        if step.stage not in runners or step.stage == "pipeline":
            raise ValueError(f"[pipeline.{name}]: unknown stage {step.stage!r}; valid: {sorted(runners)}")
        step.init = dirs.get(step.init, step.init)  # an earlier step's name means its final checkpoint
        step.distill.teacher = dirs.get(step.distill.teacher, step.distill.teacher)
        step.out_dir = os.path.join(cfg.out_dir, name)
        dirs[name] = os.path.join(step.out_dir, "final")
        out.append((name, step))
    return out


def run_pipeline(cfg, runners, writer=True):
    """Run the steps in order. With --train.resume=true a finished step is skipped and an interrupted one
    continues from its newest checkpoint. Wall time per step goes to out_dir/pipeline.jsonl. writer: this
    process writes pipeline.jsonl and the report (under torchrun only rank 0 does; every rank trains)."""
    steps = pipeline_configs(cfg, runners)
    os.makedirs(cfg.out_dir, exist_ok=True)
    for name, step in steps:
        if os.path.exists(os.path.join(step.out_dir, "final", "config.json")) and cfg.train.resume:
            continue  # finished in an earlier run
        t0 = time.time()
        runners[step.stage](step)
        if not writer:
            continue
        with open(os.path.join(cfg.out_dir, "pipeline.jsonl"), "a") as f:  # a resumed step adds a second row
            f.write(json.dumps({"step": name, "stage": step.stage, "wall_s": time.time() - t0}) + "\n")
    if "report" in cfg.pipeline and writer:
        report.write_report(cfg, steps, cfg.pipeline["report"])
