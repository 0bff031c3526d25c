"""
Speed of model.py on this machine: training tokens/s with MFU, sampling tokens/s, and one GRPO step.

MFU = tokens/s * Transformer.flops_per_token(seq) / peak, where the peak is a matmul measured here on the same
device and dtype (fp32 on CPU, bf16 on CUDA), not a datasheet number. Training is forward + backward + AdamW
on random tokens; sampling is Transformer.generate on ragged random prompts with no eos (all rows run to the end);
the GRPO step is grpo.grpo_step (rollout, reference log-probs, loss, AdamW) on 4 random prompts x 8 samples x 64
tokens with beta 0.04, the shape of the GRPO issue's comparison with TRL.

    python bench.py --size S                        # CPU, fp32, 2 threads
    python bench.py --size S --skip train sample    # the GRPO step only
    python bench.py --size M --threads 2
    python bench.py --size L --device cuda          # ~100M params, bf16 autocast
    python bench.py --dim 384 --n_layers 6 --n_heads 6 --n_kv_heads 2 --hidden_dim 1024 --vocab_size 8192
"""
import argparse
import copy
import random
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from grpo import GRPOConfig, grpo_step
from model import ModelConfig, Transformer

SIZES = {  # vocab, width, layers, heads, kv heads, SwiGLU width
    "S": dict(vocab_size=4096, dim=256, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=688),  # 3.95M
    "M": dict(vocab_size=8192, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, hidden_dim=1376),  # 27.4M
    "L": dict(vocab_size=32000, dim=768, n_layers=12, n_heads=12, n_kv_heads=4, hidden_dim=2048),  # ~100M, GPU
}


GRPO_SHAPE = dict(n_prompts=4, group=8, new=64, lo=16, hi=30)  # the GRPO issue's comparison with TRL


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps, warmup, agg=statistics.median):
    """Median (or agg) wall seconds of fn() over reps calls, after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return agg(times)


def take_turns(runners, device, reps, warmup=1):
    """Wall seconds of each call of each runner {name: fn}, the runners taking turns (who goes first alternates), so
    that a machine's drift hits them alike: {name: [reps times]}."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times, names = {k: [] for k in runners}, list(runners)
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            t0 = time.perf_counter()
            runners[k]()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def train_step(model, data, amp, fwd=None):
    """One training step as a closure: the forward (fwd, default the model) under the context amp, next-token
    cross-entropy in fp32, backward, AdamW. data: (B, T+1) token ids."""
    fwd = model if fwd is None else fwd  # not `fwd or model`: a compiled module refuses bool()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x, y = data[:, :-1], data[:, 1:]
    model.train()

    def step():
        with amp:
            logits = fwd(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def device_arg(parser, text):
    """The torch.device --device names; a parser error for anything but an available cpu or cuda device."""
    try:
        device = torch.device(text)
    except RuntimeError:
        parser.error(f"--device {text!r}: not a device (cpu | cuda)")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {text!r}: runs on cpu or cuda only")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {text}: no CUDA device here (torch.cuda.is_available() is False)")
    return device


def matmul_peak(device, dtype, n, reps=10):
    """FLOP/s of an n x n x n matmul in dtype: the ceiling MFU is measured against, so the fastest of reps calls
    (a median on a machine whose speed drifts underestimates it, and MFU comes out too high)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device, reps, warmup=2, agg=min)


def bench_train(model, cfg, device, amp, batch, seq, reps, warmup, fwd=None):
    data = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)  # (B, T+1)
    return batch * seq / timed(train_step(model, data, amp, fwd), device, reps, warmup)


def bench_sample(model, cfg, device, amp, batch, new, lo, hi, reps, warmup):
    rng = random.Random(0)
    prompts = [[rng.randrange(cfg.vocab_size) for _ in range(rng.randint(lo, hi))] for _ in range(batch)]
    model.eval()

    def run():
        with amp:
            model.generate(prompts, max_new_tokens=new, temperature=1.0, top_p=1.0, eos_id=None, seed=0)

    return batch * new / timed(run, device, reps, warmup)


def bench_grpo(model, cfg, device, amp, n_prompts, group, new, lo, hi, reps, warmup):
    """Seconds per grpo_step and its last rollout / update split; the reward (share of even token ids) is a stand-in:
    any cheap function of the ids costs the same."""
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    gcfg = GRPOConfig(group_size=group, max_new_tokens=new, beta=0.04, clip_eps=0.2)
    rng, last = random.Random(0), {}

    def step():
        prompts = [[rng.randrange(cfg.vocab_size) for _ in range(rng.randint(lo, hi))] for _ in range(n_prompts)]
        with amp:
            last.update(grpo_step(model, ref, opt, prompts, lambda p, c: sum(t % 2 == 0 for t in c) / len(c), gcfg))

    return timed(step, device, reps, warmup), last["rollout_s"], last["update_s"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--size", choices=list(SIZES), default="S")
    for name in SIZES["S"]:  # explicit dims override the named size
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--batch", type=int, default=8, help="training batch, sequences")
    p.add_argument("--seq", type=int, default=256, help="training sequence length")
    p.add_argument("--steps", type=int, default=6, help="timed training steps (median reported)")
    p.add_argument("--gen-batch", type=int, default=16, help="prompts sampled together")
    p.add_argument("--gen-new", type=int, default=128, help="new tokens per prompt")
    p.add_argument("--prompt-len", type=int, nargs=2, default=[20, 40], help="prompt lengths, min max")
    p.add_argument("--gen-reps", type=int, default=3, help="timed generate calls (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before each measurement (training steps, "
                   "generate calls, GRPO steps)")
    p.add_argument("--grpo-reps", type=int, default=5, help="timed GRPO steps (median reported)")
    p.add_argument("--skip", choices=["train", "sample", "grpo"], nargs="*", default=[])
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward, as train.compile "
                   "does (the training measurement only; its warmup steps include the compilation)")
    args = p.parse_args(argv)
    for flag in ("threads", "batch", "seq", "steps", "gen_batch", "gen_new", "gen_reps", "grpo_reps",
                 *(k for k in SIZES["S"] if getattr(args, k) is not None)):
        if getattr(args, flag) < 1:
            shown = flag if flag in SIZES["S"] else flag.replace("_", "-")  # the model's flags keep their "_"
            p.error(f"--{shown} must be at least 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        p.error(f"--warmup must be at least 0, got {args.warmup}")
    if not 1 <= args.prompt_len[0] <= args.prompt_len[1]:
        p.error(f"--prompt-len MIN MAX needs 1 <= MIN <= MAX, got {args.prompt_len[0]} {args.prompt_len[1]}")

    device = device_arg(p, args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dims = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in SIZES[args.size].items()}
    g = GRPO_SHAPE
    max_seq = max(args.seq, args.prompt_len[1] + args.gen_new, g["hi"] + g["new"])
    cfg = ModelConfig(**dims, max_seq_len=max_seq)
    model = Transformer(cfg).to(device)
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", torch.bfloat16) if cuda else nullcontext()
    peak = matmul_peak(device, torch.bfloat16 if cuda else torch.float32, 8192 if cuda else 2048)
    name = torch.cuda.get_device_name(device) if cuda else f"cpu, {torch.get_num_threads()} threads"
    print(f"# torch {torch.__version__} on {name}; {'bf16 autocast' if cuda else 'fp32'}")
    print(f"# model {dims}: {model.num_params() / 1e6:.2f} M params")
    print(f"# matmul peak {peak / 1e9:.1f} GFLOP/s ({'bf16 8192^3' if cuda else 'fp32 2048^3'})")
    if "train" not in args.skip:
        fwd = torch.compile(model) if args.compile else None
        tok_s = bench_train(model, cfg, device, amp, args.batch, args.seq, args.steps, args.warmup, fwd)
        mfu = tok_s * model.flops_per_token(args.seq) / peak
        print(f"train  b{args.batch}x{args.seq}{' (torch.compile)' if args.compile else ''}: {tok_s:.0f} tok/s, "
              f"MFU {100 * mfu:.1f}% ({model.flops_per_token(args.seq) / 1e6:.1f} MFLOP/token)")
    if "sample" not in args.skip:
        lo, hi = args.prompt_len
        tok_s = bench_sample(model, cfg, device, amp, args.gen_batch, args.gen_new, lo, hi, args.gen_reps, args.warmup)
        print(f"sample {args.gen_batch}x{args.gen_new} (prompts {lo}..{hi}): {tok_s:.0f} new tok/s")
    if "grpo" not in args.skip:
        sec, roll, upd = bench_grpo(model, cfg, device, amp, **g, reps=args.grpo_reps, warmup=args.warmup)
        print(f"grpo   {g['n_prompts']} prompts x {g['group']} samples x {g['new']} (prompts {g['lo']}..{g['hi']}): "
              f"{sec:.2f} s/step "
              f"(last step: rollout {roll:.2f} s, update {upd:.2f} s)")


if __name__ == "__main__":
    main()
