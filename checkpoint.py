"""
The run folder of r1-mini: checkpoints written atomically, the training state for exact resume, and the logs.

    out_dir/ckpt-0000200/   model.safetensors + config.json (Hugging Face layout), tokenizer, run_config.json,
    out_dir/final/          train_state.pt (optimizer, step, RNG states)
    out_dir/metrics.jsonl   one JSON object per logged step
    out_dir/samples.jsonl   decoded samples with their rewards

A checkpoint is written to a hidden temporary folder, flushed to disk (fsync) and renamed into place, so a crash
at any moment, a power cut included, leaves either the old checkpoint or the new one, never half of one. A step
folder counts once its train_state.pt exists. Replacing `final` (an extended run) takes two renames; a crash
between them leaves the new one under .tmp-final, and the next run puts it in place (recover_final).
"""

import dataclasses
import glob
import json
import os
import random
import shutil

import numpy as np
import torch


def list_checkpoints(out_dir):
    """Complete step checkpoints in out_dir, oldest first (a folder counts once its train_state.pt exists)."""
    paths = glob.glob(os.path.join(out_dir, "ckpt-*", "train_state.pt"))
    return sorted(os.path.dirname(p) for p in paths)


def prune_checkpoints(out_dir, keep_last):
    """Delete all but the newest keep_last step checkpoints, any folder a crash left half deleted, and any step
    checkpoint a crash left half written (.tmp-ckpt-*; never .tmp-final, which recover_final may still need). Each
    checkpoint loses its train_state.pt first, so that it stops counting as one before the rest of it goes."""
    ckpts = list_checkpoints(out_dir)
    for old in ckpts[: max(0, len(ckpts) - keep_last)]:  # ([:-0] would keep them all)
        os.remove(os.path.join(old, "train_state.pt"))
    for folder in glob.glob(os.path.join(out_dir, "ckpt-*")):
        if not os.path.exists(os.path.join(folder, "train_state.pt")):  # save_checkpoint renames whole folders
            shutil.rmtree(folder)
    for folder in glob.glob(os.path.join(out_dir, ".tmp-ckpt-*")):  # called after a save: none is being written
        shutil.rmtree(folder)


def save_checkpoint(folder, model, tok, cfg, train_state=None, weights=None):
    """Write the checkpoint to a temporary sibling folder, then rename it into place. weights: the model's full
    state dict when the model itself holds only a shard of it (FSDP2); None = model.state_dict()."""
    parent, name = os.path.split(os.path.abspath(folder))
    tmp = os.path.join(parent, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp, weights)
    tok.save(tmp)
    write_token_ids(tmp, tok)
    with open(os.path.join(tmp, "run_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=2)
    if train_state is not None:
        torch.save(train_state, os.path.join(tmp, "train_state.pt"))
    for f in os.listdir(tmp):  # on disk before the rename makes them the checkpoint: else a power cut after
        fsync(os.path.join(tmp, f))  # the rename can leave the new names pointing at empty files
    fsync(tmp)
    if os.path.exists(folder):  # only `final` is ever replaced; move the old one aside first
        old = os.path.join(parent, f".old-{name}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
        os.rename(tmp, folder)
        shutil.rmtree(old)
    else:
        os.rename(tmp, folder)
    fsync(parent)  # the rename itself


def write_token_ids(folder, tok):
    """The tokenizer's special ids in config.json, and generation_config.json (every stop id), as Hugging Face
    writes them: transformers' generate() then stops where ours does (without them it samples to max_new_tokens)."""
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    with open(path, "w") as f:
        json.dump({**cfg, **ids}, f, indent=2)
    stops = tok.stop_ids if len(tok.stop_ids) > 1 else tok.stop_ids[0]
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({**ids, "eos_token_id": stops}, f, indent=2)


def fsync(path):
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_jsonl(path):
    """The rows of a log this project appends to (metrics.jsonl, samples.jsonl, pipeline.jsonl); [] when there is
    none. A last line cut short (a process killed mid-write: no newline at its end) is dropped with a warning; any
    other line that is not JSON is a ValueError naming the file and line."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.readlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) and not line.endswith("\n"):
                print(f"warning: {path} line {i} was cut short (a killed write?); it is left out")
                break
            raise ValueError(f"{path}, line {i}: not a JSON row ({e}); fix or remove that line") from None
    return rows


class RunLog:
    """metrics.jsonl (one JSON object per logged step) and samples.jsonl, appended and flushed as we go."""

    def __init__(self, out_dir, start_step):
        os.makedirs(out_dir, exist_ok=True)
        for name in ("metrics.jsonl", "samples.jsonl"):  # drop rows past the step we resume from (a fresh
            path = os.path.join(out_dir, name)             # start keeps none: GRPO logs a step 0 again)
            if os.path.exists(path):
                rows = [r for r in read_jsonl(path) if r.get("step", 0) <= start_step] if start_step else []
                with open(path + ".tmp", "w") as f:  # a crash now leaves the old file whole
                    f.writelines(json.dumps(r) + "\n" for r in rows)
                os.replace(path + ".tmp", path)
        self.metrics = open(os.path.join(out_dir, "metrics.jsonl"), "a")
        self.samples = open(os.path.join(out_dir, "samples.jsonl"), "a")

    def log(self, row):
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()

    def log_samples(self, step, samples):
        for s in samples:
            self.samples.write(json.dumps({"step": step, **s}) + "\n")
        self.samples.flush()

    def close(self):
        self.metrics.close()
        self.samples.close()


def prepare_out_dir(cfg):
    """Refuse to overwrite earlier checkpoints unless resuming; return the checkpoint to resume from (or None).
    Resuming a finished run returns "final" (nothing to do), unless train.max_steps is now higher than the step
    `final` was written at: the run then goes on from it (or from a newer step checkpoint of an extension that
    was itself interrupted) to the new max_steps."""
    recover_final(cfg.out_dir)
    ckpts = list_checkpoints(cfg.out_dir)
    final = os.path.join(cfg.out_dir, "final")
    done = final_step(cfg.out_dir)
    if done is not None and cfg.train.resume:
        if cfg.train.max_steps <= done:
            return "final"
        newer = [c for c in ckpts if checkpoint_step(c) > done]
        return newer[-1] if newer else final
    if ckpts and not cfg.train.resume:
        raise FileExistsError(f"{cfg.out_dir} already holds checkpoints ({os.path.basename(ckpts[-1])}); "
                              "pass --train.resume=true to continue, or choose another --out_dir")
    if os.path.exists(final) and not cfg.train.resume:
        raise FileExistsError(f"{cfg.out_dir}/final exists: this run is finished; choose another --out_dir")
    return ckpts[-1] if ckpts else None


def read_json(path, hint=""):
    """A JSON object from a file this project wrote; a damaged one is a ValueError naming it (and the hint)."""
    with open(path) as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}){hint}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}{hint}")
    return obj


def read_run_config(folder):
    """The training run's config saved with our checkpoints (run_config.json), as a dict; {} for a foreign one."""
    path = os.path.join(folder, "run_config.json")
    return read_json(path) if os.path.exists(path) else {}


def warn_if_config_changed(cfg, resume_from):
    """A resumed run keeps the checkpoint's model, optimizer state and data position whatever the config says now:
    name the keys that differ from the config the checkpoint was written with (its run_config.json), since the run
    then no longer matches an uninterrupted one. Left out: what the run fills in itself (the architecture when it
    comes from `init`, the vocabulary size from the tokenizer, the name a "chat" template resolves to), out_dir (a
    copied run), and max_steps when a finished run is extended (announced where it is resumed)."""
    saved = read_run_config(resume_from)
    if not saved:
        return
    skip = {"out_dir", "model.vocab_size"}
    if os.path.basename(resume_from) == "final":
        skip.add("train.max_steps")
    keys = [k for k in changed_keys(saved, json.loads(json.dumps(dataclasses.asdict(cfg))))
            if k not in skip and not (cfg.init and k.startswith("model."))
            and not (k == "data.template" and cfg.data.template == "chat")]
    if keys:
        print(f"warning: {cfg.stage} resumes from {resume_from} (its model, optimizer state and data position), but "
              f"the config has changed since that checkpoint was written ({', '.join(keys)}); the run will not match "
              f"an uninterrupted one. Remove {cfg.out_dir} to start over with the new config")


def changed_keys(old, new, prefix=""):
    """Dotted keys whose values differ between two nested dicts; train.resume aside (it is how one resumes)."""
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b and prefix + k != "train.resume":
            keys.append(prefix + k)
    return keys


def recover_final(out_dir):
    """save_checkpoint replaces `final` in two renames (final -> .old-final, then .tmp-final -> final). After a
    crash between them there is no `final`: the new one, complete (it was flushed before the first rename), goes
    in its place. Safe when several ranks call it at once."""
    final, old, tmp = (os.path.join(out_dir, name) for name in ("final", ".old-final", ".tmp-final"))
    if os.path.exists(old) and not os.path.exists(final):
        try:
            os.rename(tmp if os.path.exists(tmp) else old, final)
        except OSError:  # another rank moved it first (or moved the new one while we chose the old one)
            if not os.path.exists(final):
                raise
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)


def final_step(out_dir):
    """The step out_dir/final was written at (its run's train.max_steps), or None when the run has not finished."""
    final = os.path.join(out_dir, "final")
    if not all(os.path.exists(os.path.join(final, name)) for name in ("config.json", "run_config.json")):
        return None
    steps = read_run_config(final).get("train", {}).get("max_steps")
    if not isinstance(steps, int):
        raise ValueError(f"{os.path.join(final, 'run_config.json')}: no integer train.max_steps (got {steps!r})")
    return steps


def checkpoint_step(folder):
    """The step of a step checkpoint, from its name: out_dir/ckpt-0000200 -> 200."""
    return int(os.path.basename(folder).split("-")[1])
