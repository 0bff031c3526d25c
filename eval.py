"""
Evaluation for r1-mini: greedy pass@1, sampled pass@k and maj@k on the same samples, from a checkpoint folder.

    python eval.py --ckpt DIR --data FILE.jsonl|synthetic[:family] --n 16 --k 1,4,16 --out report.json

pass@k is the unbiased estimator of Chen et al. 2021 (Codex paper): with n samples of which c are correct,
pass@k = 1 - C(n-c, k) / C(n, k). maj@k (self-consistency, Wang et al. 2022) is the accuracy of the most frequent
final answer among k samples, where answers that reward.is_equiv calls equal vote together.
train.py calls greedy_eval, so the accuracy in metrics.jsonl means the same as the one in a report: on CUDA both
decode under bf16 autocast when the run trained with train.bf16 (eval.py's --bf16 auto), since greedy decodes
change with the precision; on CPU everything is fp32.
"""

import argparse
import contextlib
import functools
import json
import math
import os
import time

import torch
from tqdm import tqdm

import data as D
from checkpoint import read_run_config
from reward import accuracy_reward, extract_answer, format_reward, is_equiv


def autocast(device, enabled=True):
    """bf16 autocast on CUDA when enabled (train.py's train.bf16); CPU runs fp32 either way."""
    return torch.autocast("cuda", torch.bfloat16) if enabled and device.type == "cuda" else contextlib.nullcontext()


def run_bf16(run_cfg, flag="auto"):
    """Whether to evaluate a checkpoint under bf16 autocast (on CUDA): "on", "off", or "auto": as its run trained
    and evaluated (train.bf16, default true), fp32 for a checkpoint made elsewhere (no run config)."""
    if flag == "auto":
        return bool(run_cfg.get("train", {}).get("bf16", True)) if run_cfg else False
    return flag == "on"


def pass_at_k(n, c, k):
    """Unbiased pass@k: 1 - C(n-c, k) / C(n, k), as a running product (no huge binomials)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
        fail *= 1.0 - k / i
    return 1.0 - fail


def majority_vote(answers):
    """The most voted answer among `answers` (extracted strings; None or blank: no answer, which never wins). Each
    sample votes for every distinct answer that equals its own, where equal is reward.is_equiv both ways (it reads
    its second argument as the gold: a gold "1, 2" accepts "(2,1)", not the reverse), so equivalent forms pool.
    That relation need not be transitive, so votes are counted per distinct answer rather than by grouping, and
    the counts do not depend on the samples' order. Ties go to the answer given most often as written, then to
    the one seen first (the only step where the order counts). Returns None when no answer is given."""
    given = [a for a in answers if a is not None and a.strip()]
    forms = list(dict.fromkeys(given))  # distinct answers, in order of first appearance
    if not forms:
        return None
    written = [given.count(a) for a in forms]  # (m,) how often each was given as written
    votes = [sum(n for b, n in zip(forms, written) if same_answer(a, b)) for a in forms]  # (m,)
    return forms[max(range(len(forms)), key=lambda j: (votes[j], written[j], -j))]


@functools.lru_cache(maxsize=4096)
def same_answer(a, b):
    """a and b are the same answer: equal, or each equivalent to the other (reward.is_equiv both ways)."""
    return a == b or is_equiv(a, b) and is_equiv(b, a)


def encode_prompts(tok, problems, template):
    return [tok.encode(D.format_prompt(p["question"], template), bos=True) for p in problems]


def complete(model, prompts, max_new_tokens, eos_id, batch_size, temperature=0.0, top_p=1.0, generator=None,
             desc=None):
    """model.generate over batches of prompts (ragged lists of ids); returns completion id lists in order.
    A batch holds prompts of like length (a stable sort by length, so the n samples of a prompt stay together and
    share their prefill): generate() left-pads each batch to its longest prompt, and padding is wasted work.
    A progress bar over the batches when `desc` is given (and the output is a terminal)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [None] * len(prompts)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=None if desc else True):
        rows = order[s: s + batch_size]
        comps = model.generate([prompts[i] for i in rows], max_new_tokens, temperature=temperature, top_p=top_p,
                               eos_id=eos_id, generator=generator)
        for i, c in zip(rows, comps):
            out[i] = c
    return out


def score(tok, problem, completion_ids):
    """Decode a completion and score it: the sample record that reports and samples.jsonl hold."""
    text = tok.decode(completion_ids)
    return {"question": problem["question"], "gold": problem["answer"], "completion": text,
            "pred": extract_answer(text), "reward": accuracy_reward(text, problem["answer"]),
            "format": format_reward(text), "length": len(completion_ids)}


def greedy_eval(model, tok, problems, template, max_new_tokens, batch_size=64, desc=None):
    """Greedy (temperature 0) accuracy, format rate and mean completion length; returns (metrics, samples).
    The format rate is reward.format_reward's R1 format (<think>..</think><answer>..</answer>): it measures the
    r1 template; the other templates never ask for <answer> tags, so theirs is 0."""
    comps = complete(model, encode_prompts(tok, problems, template), max_new_tokens, tok.stop_ids, batch_size,
                     desc=desc)
    samples = [score(tok, p, c) for p, c in zip(problems, comps)]
    n = max(1, len(samples))
    metrics = {"accuracy": sum(s["reward"] for s in samples) / n,
               "format_rate": sum(s["format"] for s in samples) / n,
               "mean_len": sum(s["length"] for s in samples) / n}
    return metrics, samples


def sampled_eval(model, tok, problems, template, n, ks, max_new_tokens, temperature=1.0, top_p=1.0,
                 batch_size=64, generator=None):
    """n samples per problem: mean pass@k and maj@k over problems for each k, plus the per-problem records.
    maj@k votes over the first k samples of each problem."""
    prompts = encode_prompts(tok, problems, template)
    flat = [p for p in prompts for _ in range(n)]  # (P*n,) the n samples of a problem contiguous
    comps = complete(model, flat, max_new_tokens, tok.stop_ids, batch_size, temperature, top_p, generator,
                     desc=f"sampling {n} per problem")
    records = []
    for i, p in enumerate(problems):
        samples = [score(tok, p, c) for c in comps[i * n: (i + 1) * n]]
        c = sum(s["reward"] for s in samples)
        rec = {"question": p["question"], "gold": p["answer"], "correct": c, "samples": samples,
               **{key: p[key] for key in ("family", "level", "subject") if key in p}}
        for k in ks:
            rec[f"pass@{k}"] = pass_at_k(n, int(c), k)
            vote = majority_vote([s["pred"] for s in samples[:k]])
            rec[f"maj@{k}"] = float(vote is not None and is_equiv(vote, p["answer"]))
        records.append(rec)
    keys = [f"{m}@{k}" for m in ("pass", "maj") for k in dict.fromkeys(ks)]  # a repeated k counts once
    return {key: sum(r[key] for r in records) / len(records) for key in keys}, records


def breakdown(records, keys):
    """Mean of each metric key per task family / MATH subject / level, where the data has them."""
    out = {}
    for field in ("family", "subject", "level"):
        groups = {}
        for r in records:
            if field in r:
                groups.setdefault(str(r[field]), []).append(r)
        if groups:
            out[field] = {g: {"n": len(rs), **{k: sum(r[k] for r in rs) / len(rs) for k in keys}}
                          for g, rs in sorted(groups.items())}
    return out


def check_checkpoint(path):
    """Fail before any sampling when the folder cannot be a checkpoint, naming what is missing."""
    if os.path.isfile(path):
        raise NotADirectoryError(f"checkpoint {path} is a file: pass the folder that holds it "
                                 f"({os.path.dirname(path) or '.'})")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    missing = [name for name, alts in {"config": ["config.json"],
                                       "weights": ["model.safetensors", "model.safetensors.index.json"],
                                       "tokenizer": ["tokenizer.model", "tokenizer.json"]}.items()
               if not any(os.path.exists(os.path.join(path, a)) for a in alts)]
    if missing:
        final = os.path.join(path, "final")
        hint = f" (a run folder? its checkpoint is {final})" if os.path.isdir(final) else ""
        raise FileNotFoundError(f"{path} is not a complete checkpoint: no {', '.join(missing)} file{hint}")


def load_checkpoint(path, device):
    """Model, tokenizer and the training run's config (if the folder has run_config.json) from a folder."""
    from model import Transformer
    check_checkpoint(path)
    tok = D.load_tokenizer(path)
    model = Transformer.from_pretrained(path).to(device).eval()
    return model, tok, read_run_config(path)




def held_out(spec, n_test, run_cfg, jsonl=None):
    """--data as problems. For a synthetic spec and a run trained on synthetic data, the run's held-out set: its
    families (unless the spec names some), levels and data seed, and never one of its training questions, so
    'synthetic' with n_test=None (the run's data.n_test) is exactly the run's own test split, and 'synthetic:add'
    holds no training problem. n_test=None outside a synthetic run: 500.
    A JSONL file is read with the `jsonl` settings given (load_jsonl's format and field names; None = not given);
    when it is the run's own train or test file, the run's settings fill in the others, so the golds are the ones
    train.py evaluated against."""
    data = run_cfg.get("data") or {}
    if not D.is_synthetic_spec(spec):
        path = os.path.realpath(spec)
        own = any(data.get(k) and os.path.realpath(data[k]) == path for k in ("train_file", "test_file"))
        kw = {k: data[k] for k in ("format", "question_field", "answer_field", "solution_field") if own and k in data}
        kw.update({k: v for k, v in (jsonl or {}).items() if v is not None})
        return D.load_jsonl(spec, **kw)
    if not data or data.get("train_file"):
        return D.parse_data_spec(spec, n_test or 500)
    dc = D.DataConfig(**{k: v for k, v in data.items() if k in D.DataConfig.__dataclass_fields__})
    if not (n_test or dc.n_test):
        raise ValueError(f"--data {spec}: the checkpoint's run has no held-out problems (data.n_test = 0); pass "
                         "--n_test N for N synthetic problems it never trained on")
    train = {p["question"] for p in D.load_problems(dc, "train")}
    return D.parse_data_spec(spec, n_test or dc.n_test, dc.seed, dc.levels, dc.families, exclude=train)


def parse_args(argv):
    ap = argparse.ArgumentParser(description="pass@1 / pass@k / maj@k of a checkpoint on a problem set")
    ap.add_argument("--ckpt", required=True, help="checkpoint folder (ours or Hugging Face Llama/Qwen2)")
    ap.add_argument("--data", default="synthetic", help="FILE.jsonl, synthetic or synthetic:FAMILY[,FAMILY] (for our "
                    "checkpoints: the run's held-out split, never one of its training problems)")
    ap.add_argument("--prompt", default=None, help="ask one question instead: prints reasoning and answer")
    ap.add_argument("--n", type=int, default=16, help="samples per problem for pass@k / maj@k (0: greedy only)")
    ap.add_argument("--k", default=None, help="comma list of k (default: those of 1,4,16 up to --n)")
    ap.add_argument("--out", default="report.json", help="report path; the per-problem records go beside it, "
                    "its name with .jsonl for .json (report.json -> report.jsonl; other names get .jsonl added)")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 1 for the n "
                    "samples; --prompt answers greedily unless it is given)")
    ap.add_argument("--top_p", type=float, default=1.0)
    ap.add_argument("--max_new_tokens", type=int, default=None, help="completion budget (default: the run's "
                    "train.max_new_tokens for our checkpoints, else 256)")
    ap.add_argument("--template", default=None, help="plain, r1, qwen, deepseek-r1 or chat (the tokenizer's "
                    "own); default: the checkpoint's training template")
    ap.add_argument("--limit", type=int, default=0, help="evaluate only the first N problems (0: all)")
    ap.add_argument("--n_test", type=int, default=None, help="synthetic test problems (default: the run's "
                    "data.n_test for our synthetic runs, so --data synthetic is their test split; else 500)")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", default="auto", choices=["auto", "on", "off"], help="bf16 autocast on CUDA (CPU is "
                    "always fp32); auto: as the run trained (train.bf16), fp32 for a checkpoint from elsewhere")
    ap.add_argument("--skip_long", action="store_true",
                    help="drop problems whose prompt + max_new_tokens exceed the model's max_seq_len")
    ap.add_argument("--format", default=None, choices=["auto", "gsm8k", "math", "generic"], help="JSONL format "
                    "(default: the run's data.format when --data is the run's own train or test file, else auto)")
    for field, default in (("question", "question"), ("answer", "answer"), ("solution", "")):
        ap.add_argument(f"--{field}_field", default=None, help=f"generic JSONL: the {field} key (default: the "
                        f"run's data.{field}_field when --data is the run's own file, else {default!r})")
    args = ap.parse_args(argv)
    try:
        args.k = [int(k) for k in args.k.split(",") if k.strip()] if args.k is not None else \
            [k for k in (1, 4, 16) if k <= max(args.n, 1)]
    except ValueError:
        ap.error(f"--k {args.k!r}: expected a comma list of integers")
    for name, ok, want in [("n", args.n >= 0, ">= 0 (0: greedy only)"), ("limit", args.limit >= 0, ">= 0 (0: all)"),
                           ("n_test", args.n_test is None or args.n_test >= 1, "at least 1"),
                           ("batch_size", args.batch_size >= 1, "at least 1"),
                           ("max_new_tokens", args.max_new_tokens is None or args.max_new_tokens >= 1, "at least 1"),
                           ("temperature", args.temperature is None or 0 <= args.temperature < math.inf,
                            ">= 0 (0: greedy)"),
                           ("top_p", 0 < args.top_p <= 1, "in (0, 1]"),
                           ("k", not args.n or (args.k and min(args.k) >= 1), "a comma list of k >= 1")]:
        if not ok:
            ap.error(f"--{name} {getattr(args, name)}: must be {want}")
    if args.n and len(set(args.k)) < len(args.k):
        ap.error(f"--k {','.join(map(str, args.k))}: each k once")
    if args.n and max(args.k) > args.n:
        ap.error(f"--k {max(args.k)} is larger than --n {args.n}: pass@k needs k <= n samples")
    if args.out.endswith(".jsonl"):  # the records file would overwrite the report
        ap.error(f"--out {args.out}: name the JSON report (e.g. report.json); the samples go beside it as .jsonl")
    if args.template is not None and args.template not in D.TEMPLATES + ("chat",):
        ap.error(f"--template {args.template}: must be one of {', '.join(D.TEMPLATES + ('chat',))}")
    try:
        torch.device(args.device if args.device != "auto" else "cpu")
    except RuntimeError:
        ap.error(f"--device {args.device}: not a device (auto, cpu, cuda, cuda:N, ...)")
    if args.prompt is not None:
        if not args.prompt.strip():
            ap.error("--prompt is empty: give the question to ask")
        try:
            args.prompt.encode("utf-8")
        except UnicodeEncodeError:  # argv bytes that are not UTF-8 arrive as lone surrogates
            ap.error("--prompt is not valid UTF-8")
        return args
    problem = D.check_data_spec(args.data)
    if problem:
        ap.error(f"--data {args.data}: {problem}")
    # the outputs, checked now rather than after the sampling: a folder in the way, a parent that is a file
    for path in (args.out, records_path(args.out)):
        if os.path.isdir(path):
            ap.error(f"--out {args.out}: {path} is a folder; name the report file (e.g. {path}/report.json)")
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            ap.error(f"--out {args.out}: {parent} is a file, so {path} cannot be written")
    outputs = {os.path.realpath(p) for p in (args.out, records_path(args.out))}
    if not D.is_synthetic_spec(args.data) and os.path.realpath(args.data) in outputs:
        ap.error(f"--out {args.out}: the report or its records ({records_path(args.out)}) would overwrite --data "
                 f"{args.data}")
    return args


def records_path(out):
    """Where the per-problem records of report `out` go: report.json -> report.jsonl, any other name + .jsonl (so
    runs named T0.5 and T0.7 keep their own records)."""
    return (out[: -len(".json")] if out.endswith(".json") else out) + ".jsonl"


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    check_checkpoint(args.ckpt)
    jsonl = {k: getattr(args, k) for k in ("format", "question_field", "answer_field", "solution_field")}
    problems = None if args.prompt else held_out(args.data, args.n_test, read_run_config(args.ckpt), jsonl)  # early
    model, tok, run_cfg = load_checkpoint(args.ckpt, device)
    template = D.resolve_template(args.template or run_cfg.get("data", {}).get("template", "plain"), tok)
    if args.max_new_tokens is None:  # the budget the run evaluated with (it fits the model's context)
        args.max_new_tokens = run_cfg.get("train", {}).get("max_new_tokens", 256)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with autocast(device, run_bf16(run_cfg, args.bf16)):
        return run_eval(args, model, tok, run_cfg, template, problems, gen)


def run_eval(args, model, tok, run_cfg, template, problems, gen):
    """main() after loading: one question (--prompt), or the report on the problems."""
    if args.prompt:
        ids = tok.encode(D.format_prompt(args.prompt, template), bos=True)
        room = model.cfg.max_seq_len - len(ids)  # one question: answer in whatever room the context leaves
        if room < 1:
            raise ValueError(f"the prompt is {len(ids)} tokens; the model's max_seq_len is {model.cfg.max_seq_len}")
        text = tok.decode(model.generate([ids], min(args.max_new_tokens, room), temperature=args.temperature or 0.0,
                                         top_p=args.top_p, eos_id=tok.stop_ids, generator=gen)[0])
        print(text.strip(), f"\n\nextracted answer: {extract_answer(text)}")
        return None
    problems = problems[: args.limit] if args.limit else problems
    if not problems:
        raise ValueError(f"--data {args.data}: no problems to evaluate")
    lens = [len(p) for p in encode_prompts(tok, problems, template)]
    fits = [n + args.max_new_tokens <= model.cfg.max_seq_len for n in lens]
    if not all(fits) and not args.skip_long:
        raise ValueError(f"{fits.count(False)} of {len(problems)} prompts + max_new_tokens {args.max_new_tokens} "
                         f"exceed the model's max_seq_len {model.cfg.max_seq_len}; pass --skip_long to drop them, "
                         "or lower --max_new_tokens")
    skipped = fits.count(False)
    problems = [p for p, ok in zip(problems, fits) if ok]
    if not problems:
        fix = ("lower --max_new_tokens" if min(lens) < model.cfg.max_seq_len else
               f"the shortest prompt alone has {min(lens)} tokens: this model cannot read these problems")
        raise ValueError(f"no prompt fits max_seq_len {model.cfg.max_seq_len} with max_new_tokens "
                         f"{args.max_new_tokens}: {fix}")
    temperature = 1.0 if args.temperature is None else args.temperature  # the n samples' temperature
    t0 = time.time()
    greedy, greedy_samples = greedy_eval(model, tok, problems, template, args.max_new_tokens, args.batch_size,
                                         desc="greedy")
    report = {"ckpt": args.ckpt, "data": args.data, "n_problems": len(problems), "skipped_long": skipped,
              "template": template,
              "args": {**{k: v for k, v in vars(args).items() if k != "prompt"}, "temperature": temperature},
              "run_config": run_cfg,
              "greedy": greedy}
    records = [{"question": s["question"], "gold": s["gold"], "greedy": s, "greedy_correct": s["reward"],
                **{key: p[key] for key in ("family", "level", "subject") if key in p}}
               for s, p in zip(greedy_samples, problems)]
    if args.n:
        report["sampled"], sampled = sampled_eval(model, tok, problems, template, args.n, args.k,
                                                  args.max_new_tokens, temperature, args.top_p,
                                                  args.batch_size, gen)
        for r, s in zip(records, sampled):
            r.update({k: v for k, v in s.items() if k not in r})
    n_tokens = sum(s["length"] for s in greedy_samples) + sum(
        x["length"] for r in records for x in r.get("samples", []))
    report["tokens_per_s"] = n_tokens / (time.time() - t0)
    metric_keys = ["greedy_correct"] + [f"{m}@{k}" for m in ("pass", "maj") for k in args.k if args.n]
    report["breakdown"] = breakdown(records, metric_keys)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    D.write_atomic(records_path(args.out), "".join(json.dumps(r) + "\n" for r in records).encode())
    D.write_atomic(args.out, json.dumps(report, indent=2).encode())  # last: a report always has its records
    print(json.dumps({"greedy": greedy, **report.get("sampled", {})}, indent=2))
    return report


if __name__ == "__main__":
    main()
