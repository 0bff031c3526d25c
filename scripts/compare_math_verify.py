"""
Compare reward.is_equiv / accuracy_reward with Math-Verify (PyPI `math-verify`, Hugging Face), the public
reference for this job. Math-Verify is not a project dependency: run this from a separate environment,

    python3 -m venv /tmp/mv && /tmp/mv/bin/pip install math-verify sympy pytest
    /tmp/mv/bin/python scripts/compare_math_verify.py [--data-dir ../shared/data] [--shifts 5]

1. our test table (tests/test_reward.py, with its hand-written labels): agreement between the two, the
   accuracy of each against the labels, and every case where they disagree;
2. the real data, the same pairs as scripts/check_reward_real.py: MATH-500 solutions against their own and
   other rows' answers, GSM8K test solutions against their own and other rows' '#### x' numbers.
Math-Verify is called as its README suggests: verify(parse(gold), parse(pred)), with the gold wrapped in $..$.
"""
import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "scripts"))
from check_reward_real import gsm8k_different, gsm8k_number, load_jsonl, pairs_for  # noqa: E402
from reward import accuracy_reward, is_equiv  # noqa: E402

try:
    from math_verify import parse, verify
except ImportError:  # --help still works; main() says how to install it
    parse = verify = None


def mv_equiv(pred, gold, wrap_pred):
    """Math-Verify's verdict; a wrapped pred is an answer string, an unwrapped one a whole solution."""
    g = parse(f"${gold}$")
    p = parse(f"${pred}$" if wrap_pred else pred)
    return bool(verify(g, p))


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def compare_table():
    from test_reward import CASES
    rows = [(c, p, g, ok) for c, p, g, ok in CASES if isinstance(p, str) and isinstance(g, str)]
    agree, ours_right, mv_right, diffs = 0, 0, 0, []
    for cat, pred, gold, ok in rows:
        ours = is_equiv(pred, gold)
        mv = mv_equiv(pred, gold, wrap_pred=True)
        agree += ours == mv
        ours_right += ours == ok
        mv_right += mv == ok
        if ours != mv:
            diffs.append((cat, pred, gold, ok, ours, mv))
    n = len(rows)
    print(f"test table ({n} string cases): agreement {agree}/{n} = {100 * agree / n:.1f}%; "
          f"vs labels: ours {ours_right}/{n}, Math-Verify {mv_right}/{n}")
    for cat, pred, gold, ok, ours, mv in diffs:
        print(f"  [{cat}] pred {pred!r} gold {gold!r}: label {ok}, ours {ours}, Math-Verify {mv}")


def compare_real(name, sols, golds, different, pairs):
    stats = {"pos": [0, 0, 0], "neg": [0, 0, 0]}  # [n, ours correct, mv correct]
    t_ours, t_mv, notes = [], [], []
    jobs = [(i, i, "pos") for i in range(len(sols))] + [(i, j, "neg") for i, j in pairs if different(golds[i], golds[j])]
    for i, j, kind in jobs:
        want = 1.0 if kind == "pos" else 0.0
        ours, dt = timed(accuracy_reward, sols[i], golds[j])
        t_ours.append(dt)
        mv, dt = timed(mv_equiv, sols[i], golds[j], False)
        t_mv.append(dt)
        s = stats[kind]
        s[0] += 1
        s[1] += ours == want
        s[2] += float(mv) == want
        if ours != want or float(mv) != want:
            notes.append(f"  {kind} row {i} vs gold {golds[j]!r}: want {want}, ours {ours}, Math-Verify {float(mv)}")
    for kind, label in (("pos", "positives scored 1"), ("neg", "negatives scored 0")):
        n, o, m = stats[kind]
        d = max(n, 1)  # --shifts 0: no negatives
        print(f"{name} {label}: ours {o}/{n} = {100 * o / d:.2f}%, Math-Verify {m}/{n} = {100 * m / d:.2f}%")
    print(f"{name} time per call: ours median {1000 * statistics.median(t_ours):.3f} ms worst "
          f"{1000 * max(t_ours):.1f} ms; Math-Verify median {1000 * statistics.median(t_mv):.3f} ms worst "
          f"{1000 * max(t_mv):.1f} ms")
    for line in notes:
        print(line)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--shifts", type=int, default=5, help="negatives per row: rows i+1..i+shifts")
    args = ap.parse_args(argv)
    if parse is None:
        print("math_verify is not installed here; run this script from its own environment:\n"
              "    python3 -m venv /tmp/mv && /tmp/mv/bin/pip install math-verify sympy pytest\n"
              "    /tmp/mv/bin/python scripts/compare_math_verify.py")
        return 2
    compare_table()
    math_path = os.path.join(args.data_dir, "math500_test.jsonl")
    gsm_path = os.path.join(args.data_dir, "gsm8k_test.jsonl")
    if not (os.path.exists(math_path) and os.path.exists(gsm_path)):
        print(f"no data in {os.path.abspath(args.data_dir)}: real-data comparison skipped")
        return 0
    rows = load_jsonl(math_path)
    compare_real("MATH-500", [r["solution"] for r in rows], [r["answer"] for r in rows],
                 lambda a, b: a.replace(" ", "") != b.replace(" ", ""), pairs_for(len(rows), args.shifts, False))
    rows = load_jsonl(gsm_path)
    compare_real("GSM8K test", [r["answer"] for r in rows], [gsm8k_number(r["answer"]) for r in rows],
                 gsm8k_different, pairs_for(len(rows), args.shifts, False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
