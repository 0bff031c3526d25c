"""
Check reward.py on real benchmark answers. Not part of the test suite: it needs the data folder.

    python scripts/check_reward_real.py                       # data in ../shared/data next to the repo
    python scripts/check_reward_real.py --data-dir DIR --shifts 20 --all-pairs

MATH-500: every reference solution must score 1.0 against its own answer (target >= 99%), and 0.0 against
the answer of another row whose answer string differs (false positives < 0.5%). A flagged pair can be a
real equivalence between two differently written answers ("\\frac14" and "\\frac{1}{4}"): they are listed so
a person can judge. GSM8K test: each solution against the number after '####', same two checks (answers
are different when their numbers differ). Negatives pair row i with rows i+1..i+shifts (or all pairs).
"""
import argparse
import json
import os
import statistics
import sys
import time
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reward import accuracy_reward  # noqa: E402


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score(completion, gold, times):
    t0, c0 = time.perf_counter(), time.thread_time()
    r = accuracy_reward(completion, gold)
    times.append((time.perf_counter() - t0, time.thread_time() - c0, gold))
    return r


def check(name, sols, golds, different, pairs, times):
    """sols[i] should score 1 against golds[i], and 0 against golds[j] for (i, j) in pairs when different."""
    misses = [i for i in range(len(sols)) if score(sols[i], golds[i], times) != 1.0]
    n_neg, false_pos = 0, []
    for i, j in pairs:
        if not different(golds[i], golds[j]):
            continue
        n_neg += 1
        if score(sols[i], golds[j], times) != 0.0:
            false_pos.append((i, j))
    n = len(sols)
    print(f"{name}: positives {n - len(misses)}/{n} = {100 * (n - len(misses)) / n:.2f}%  "
          f"false positives {len(false_pos)}/{n_neg} = {100 * len(false_pos) / max(n_neg, 1):.3f}%")
    for i in misses:
        print(f"  MISS row {i}: gold {golds[i]!r}")
    for i, j in false_pos:
        print(f"  FALSE POSITIVE row {i} answer {golds[i]!r} accepted for gold {golds[j]!r} (row {j})")
    return misses, false_pos, n_neg


def pairs_for(n, shifts, all_pairs):
    if all_pairs:
        return [(i, j) for i in range(n) for j in range(n) if i != j]
    return [(i, (i + k) % n) for i in range(n) for k in range(1, shifts + 1)]


def gsm8k_number(answer):
    return answer.split("####")[-1].strip()


def gsm8k_different(a, b):
    try:
        return Fraction(a.replace(",", "")) != Fraction(b.replace(",", ""))
    except ValueError:
        return a != b


def main(argv=None):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.path.join(repo, "..", "shared", "data"))
    ap.add_argument("--shifts", type=int, default=20, help="negatives per row: rows i+1..i+shifts")
    ap.add_argument("--all-pairs", action="store_true", help="MATH-500: every ordered pair of rows")
    args = ap.parse_args(argv)
    math_path = os.path.join(args.data_dir, "math500_test.jsonl")
    gsm_path = os.path.join(args.data_dir, "gsm8k_test.jsonl")
    if not (os.path.exists(math_path) and os.path.exists(gsm_path)):
        print(f"no data: need math500_test.jsonl and gsm8k_test.jsonl in {os.path.abspath(args.data_dir)} "
              f"(pass --data-dir); nothing checked")
        return 2

    accuracy_reward("\\boxed{p - q}", "-q + p")  # sympy initializes itself on first use (~0.1 s): not timed
    times = []
    rows = load_jsonl(math_path)
    sols, golds = [r["solution"] for r in rows], [r["answer"] for r in rows]
    m_miss, m_fp, m_neg = check("MATH-500", sols, golds, lambda a, b: a.replace(" ", "") != b.replace(" ", ""),
                                pairs_for(len(rows), args.shifts, args.all_pairs), times)
    n_math = len(rows)
    rows = load_jsonl(gsm_path)
    sols, golds = [r["answer"] for r in rows], [gsm8k_number(r["answer"]) for r in rows]
    n_gsm = len(rows)
    g_miss, g_fp, g_neg = check("GSM8K test", sols, golds, gsm8k_different,
                                pairs_for(len(rows), args.shifts, False), times)

    # wall time includes waiting for a shared CPU; the thread's CPU time is what the reward itself costs
    for name, k in (("wall", 0), ("CPU", 1)):
        ms = sorted(1000 * t[k] for t in times)
        slowest = max(times, key=lambda t: t[k])
        print(f"{name} time per accuracy_reward call over {len(ms)} calls: median {statistics.median(ms):.3f} ms, "
              f"p99 {ms[int(0.99 * len(ms))]:.3f} ms, worst {ms[-1]:.1f} ms (gold {slowest[2]!r})")
    ok = (len(m_miss) <= 0.01 * n_math and len(m_fp) < 0.005 * max(m_neg, 1)
          and len(g_miss) <= 0.01 * n_gsm and len(g_fp) < 0.005 * max(g_neg, 1))
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
