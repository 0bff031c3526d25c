"""
Interleaved A/B timing of two versions of this repo's model.py and grpo.py, in one process. On a machine whose
speed drifts by 20% from minute to minute (the 2-core CPU this project is measured on), a 5% change is only
visible when the two versions take turns.

    python scripts/ab_speed.py --old HEAD~1 --what generate --batch 16 --new-tokens 128
    python scripts/ab_speed.py --old HEAD~1 --what generate --batch 32 --new-tokens 64
    python scripts/ab_speed.py --old HEAD~1 --what grpo_update
    python scripts/ab_speed.py --old a48932f --new HEAD --what train

--old and --new name git revisions; --new defaults to the files on disk. Each version's model.py,
hf_checkpoint.py and grpo.py are loaded under names of their own, so both live in the process at once. Prints each
side's median time and the median of the per-pair ratios old/new (above 1: the new version is faster).
"""
import argparse
import atexit
import copy
import importlib.util
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import GRPO_SHAPE, SIZES, take_turns  # noqa: E402

FILES = ("model.py", "hf_checkpoint.py", "grpo.py", "config.py")
BY_NAME = ("hf_checkpoint", "config", "model", "grpo")  # names the versioned files import by, restored after


def load_version(rev, tag):
    """(model, grpo) modules of revision rev (None: the files on disk), imported under names ending in tag.
    While they load, the plain names model.py and grpo.py import (hf_checkpoint, config, model) are this version's."""
    folder = ROOT
    if rev is not None:
        folder = tempfile.mkdtemp(prefix=f"ab_{tag}_")
        for name in FILES:
            r = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{name}"], capture_output=True)
            if r.returncode != 0:
                raise SystemExit(f"ab_speed.py: cannot read {name} at revision {rev!r}: {r.stderr.decode().strip()}")
            with open(os.path.join(folder, name), "wb") as f:
                f.write(r.stdout)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the modules are loaded by then
    saved = {name: sys.modules.pop(name) for name in BY_NAME if name in sys.modules}
    sys.path.insert(0, folder)
    try:
        mods = []
        for name in ("model", "grpo"):
            spec = importlib.util.spec_from_file_location(f"{name}_{tag}", os.path.join(folder, f"{name}.py"))
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            if name == "model":
                sys.modules[name] = mod  # grpo.py's `from model import ...` gets this version's model
            mods.append(mod)
    finally:
        sys.path.remove(folder)
        for name in BY_NAME:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return mods


def make_runner(model_mod, grpo_mod, args):
    """One timed unit of work for this version, on the same weights and inputs as the other version's."""
    torch.manual_seed(args.seed)
    cfg = model_mod.ModelConfig(**SIZES[args.size], max_seq_len=max(512, 40 + args.new_tokens))  # prompt <= 40
    model = model_mod.Transformer(cfg)
    rng = random.Random(args.seed)
    if args.what == "generate":
        prompts = [[rng.randrange(3, cfg.vocab_size) for _ in range(rng.randint(20, 40))] for _ in range(args.batch)]
        model.eval()
        return lambda: model.generate(prompts, args.new_tokens, seed=args.seed)
    if args.what == "train":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randint(0, cfg.vocab_size, (8, 257), generator=torch.Generator().manual_seed(args.seed))

        def step():
            logits = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    # grpo_update: one update on a fixed rollout (the shape), the reference a frozen copy
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    gcfg = grpo_mod.GRPOConfig(group_size=GRPO_SHAPE["group"], max_new_tokens=GRPO_SHAPE["new"], beta=0.04)
    prompts = [[rng.randrange(4, cfg.vocab_size) for _ in range(rng.randint(GRPO_SHAPE["lo"], GRPO_SHAPE["hi"]))]
               for _ in range(GRPO_SHAPE["n_prompts"])]
    prompt_ids = [p for p in prompts for _ in range(gcfg.group_size)]
    completion_ids = [[rng.randrange(4, cfg.vocab_size) for _ in range(gcfg.max_new_tokens)] for _ in prompt_ids]
    advantages = grpo_mod.group_advantages(torch.randn(len(prompt_ids), generator=torch.Generator().manual_seed(0)),
                                           gcfg.group_size)
    return lambda: grpo_mod.grpo_update(model, ref, opt, prompt_ids, completion_ids, advantages, gcfg)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.add_argument("--old", required=True, help="git revision of the old version")
    p.add_argument("--new", default=None, help="git revision of the new version (default: the files on disk)")
    p.add_argument("--what", choices=["generate", "grpo_update", "train"], default="generate")
    p.add_argument("--size", choices=["S", "M"], default="S")
    p.add_argument("--batch", type=int, default=16, help="generate: prompts")
    p.add_argument("--new-tokens", type=int, default=128, help="generate: new tokens per prompt")
    p.add_argument("--reps", type=int, default=12, help="timed pairs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for flag in ("reps", "batch", "new_tokens", "threads"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    runners = {side: make_runner(*load_version(rev, side), args) for side, rev in (("old", args.old), ("new", args.new))}
    times = take_turns(runners, torch.device("cpu"), args.reps)
    for side, ts in times.items():
        print(f"{side}: median {statistics.median(ts) * 1e3:.1f} ms per {args.what}")
    ratio = statistics.median(a / b for a, b in zip(times["old"], times["new"]))
    print(f"ratio old/new {ratio:.3f} (above 1: new is faster), {args.reps} pairs, {args.what} size {args.size}")
    return ratio


if __name__ == "__main__":
    main()
