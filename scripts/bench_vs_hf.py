"""
model.py against transformers' LlamaForCausalLM with the same weights, on one device, made for a GPU.

The CPU comparison is ../shared/bench. Logits parity (fp32, and each under bf16 autocast against fp32), greedy parity,
then training tokens/s (forward + backward + AdamW, fp32 weights under bf16 autocast on CUDA) and sampling tokens/s
(ragged prompts, no eos), the two implementations taking turns in one process. Needs transformers.

    python scripts/bench_vs_hf.py --size L                       # ~100M params on CUDA
    python scripts/bench_vs_hf.py --size S --device cpu --train 8x256 --generate 16x128 --reps 3

Prints each side's median rate and the median of the per-pair ratios ours/hf (above 1: ours is faster); for
generate, also ours without the CUDA graph (model.py departure 8).
"""
import argparse
import os
import random
import statistics
import sys
import tempfile
from contextlib import nullcontext

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import SIZES, device_arg, matmul_peak, take_turns, train_step  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402


def pair(dims, device, max_seq):
    """Our model with random weights, and transformers' model loaded from our saved copy of them."""
    from transformers import LlamaForCausalLM
    ours = Transformer(ModelConfig(**dims, max_seq_len=max_seq)).to(device)
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        hf = LlamaForCausalLM.from_pretrained(d, attn_implementation="sdpa").float().to(device)
    return ours, hf


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def parity(ours, hf, device, amp, vocab):
    """Logits on random tokens in fp32 (no TF32) and under autocast; greedy completions of ragged prompts, ours
    batched against transformers one prompt at a time."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    ours.eval(), hf.eval()
    x = torch.randint(0, vocab, (4, 256), device=device)
    with torch.no_grad():
        a, b = ours(x).float(), hf(input_ids=x).logits.float()
        print(f"parity fp32 logits: max abs diff {(a - b).abs().max().item():.2e}, relative {rel(a, b):.2e}")
        if amp is not None:
            with amp:
                a16, b16 = ours(x).float(), hf(input_ids=x).logits.float()
            print(f"parity bf16 autocast logits, relative: ours to fp32 {rel(a16, a):.2e}, transformers to fp32 "
                  f"{rel(b16, b):.2e}, ours to transformers {rel(a16, b16):.2e}")
    rng = random.Random(1)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(5, 30))] for _ in range(8)]
    got = ours.generate(prompts, max_new_tokens=32, temperature=0.0)
    same = 0
    for p, g in zip(prompts, got):
        ids = torch.tensor([p], device=device)
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32,
                          min_new_tokens=32, pad_token_id=0, eos_token_id=None)
        same += out[0, len(p):].tolist() == g
    print(f"parity greedy fp32, 8 ragged prompts x 32 tokens: {same}/8 completions equal")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return same


def summary(name, times, work, unit):
    ours, hf = (work / statistics.median(times[k]) for k in ("ours", "hf"))
    ratio = statistics.median(h / o for o, h in zip(times["ours"], times["hf"]))
    print(f"{name}: ours {ours:.0f} {unit}, transformers {hf:.0f} {unit}, median ratio ours/hf {ratio:.2f}")
    return ours, hf, ratio


def bench_train(ours, hf, device, amp, batch, seq, reps, peak):
    data = torch.randint(0, ours.cfg.vocab_size, (batch, seq + 1), device=device)
    amp = amp or nullcontext()
    runners = {"ours": train_step(ours, data, amp), "hf": train_step(hf, data, amp, lambda t: hf(input_ids=t).logits)}
    times = take_turns(runners, device, reps, warmup=2)
    a, b, _ = summary(f"train b{batch}x{seq}", times, batch * seq, "tok/s")
    fpt = ours.flops_per_token(seq)
    print(f"  MFU against the measured matmul peak: ours {100 * a * fpt / peak:.1f}%, transformers "
          f"{100 * b * fpt / peak:.1f}%")


def bench_generate(ours, hf, device, amp, batch, new, reps):
    ours.eval(), hf.eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(3, ours.cfg.vocab_size) for _ in range(rng.randint(20, 40))] for _ in range(batch)]
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=device)
    att = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=device)

    def mine(graph):
        def run():
            with amp or nullcontext():
                out = ours.generate(prompts, max_new_tokens=new, temperature=1.0, cuda_graph=graph)
            assert all(len(c) == new for c in out)
        return run

    def theirs():
        with amp or nullcontext():
            out = hf.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              max_new_tokens=new, min_new_tokens=new, use_cache=True, pad_token_id=0,
                              eos_token_id=None)
        assert out.shape[1] == P + new

    runners = {"ours": mine(None), "hf": theirs}
    if device.type == "cuda":
        runners["eager"] = mine(False)
    times = take_turns(runners, device, reps, warmup=1)
    summary(f"generate {batch}x{new}", times, batch * new, "new tok/s")
    if "eager" in times:
        print(f"  ours without the CUDA graph: {batch * new / statistics.median(times['eager']):.0f} new tok/s")


def shapes(text):
    """"8x1024,32x1024" -> [(8, 1024), (32, 1024)]: pairs of positive integers."""
    out = []
    for item in text.split(","):
        parts = item.split("x")
        if len(parts) != 2 or not all(n.isdigit() and int(n) > 0 for n in parts):
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r}: shapes are AxB with A, B positive integers, "
                                             "comma separated (e.g. 8x1024,32x1024)")
        out.append((int(parts[0]), int(parts[1])))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--size", choices=list(SIZES), default="L")
    p.add_argument("--device", default="cuda")
    p.add_argument("--train", type=shapes, default=shapes("8x1024,32x1024"), help="training batches, BxT")
    p.add_argument("--generate", type=shapes, default=shapes("16x128,64x256"), help="prompts x new tokens")
    p.add_argument("--reps", type=int, default=6, help="timed turns per measurement (median reported)")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps must be at least 1, got {args.reps}")
    device = device_arg(p, args.device)
    torch.manual_seed(0)
    dims = SIZES[args.size]
    max_seq = max([t for _, t in args.train] + [40 + n for _, n in args.generate] + [256])
    ours, hf = pair(dims, device, max_seq)
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", torch.bfloat16) if cuda else None
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"# torch {torch.__version__}, transformers {__import__('transformers').__version__}, {name}, "
          f"{'bf16 autocast' if cuda else 'fp32'}; model {dims}: {ours.num_params() / 1e6:.1f} M params")
    parity(ours, hf, device, amp, dims["vocab_size"])
    peak = matmul_peak(device, torch.bfloat16 if cuda else torch.float32, 8192 if cuda else 2048)
    print(f"# matmul peak {peak / 1e12:.1f} TFLOP/s" if cuda else f"# matmul peak {peak / 1e9:.1f} GFLOP/s")
    for batch, seq in args.train:
        bench_train(ours, hf, device, amp, batch, seq, args.reps, peak)
    for batch, new in args.generate:
        bench_generate(ours, hf, device, amp, batch, new, args.reps)


if __name__ == "__main__":
    main()
