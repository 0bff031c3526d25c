"""
Synthetic math tasks for r1-mini, seeded and deterministic, each with a gold answer and a worked solution:
    add, sub, mul   multi-digit arithmetic with a written-out carry / borrow scratchpad
    linear          "Solve 3x + 5 = 20."              answer "5"
    quadratic       "Solve: x^2 - 5x + 6 = 0"         answer "2, 3" (the set of integer roots)
    fraction        "Compute 1/3 + 1/4."              answer "\\frac{7}{12}"
`flaw_p` > 0 drops each carry/borrow of the arithmetic demonstrations with that probability (see data.py).
"""

import math
import random



def _digits(n, rng):
    return rng.randint(10 ** (n - 1), 10 ** n - 1)


def _column_steps(a, b, op, rng, flaw_p):
    """Right-to-left column addition ('+') or subtraction ('-', a >= b) with the carry/borrow written out.
    With prob. flaw_p a carry/borrow is announced but then forgotten in the next column (the demo's flaw); a
    dropped carry out of the last column writes no leading digit ("So 73 + 56 = 29.")."""
    da, db = str(a)[::-1], str(b)[::-1].ljust(len(str(a)), "0")
    lines, digits, carry = [], [], 0
    for i, (x, y) in enumerate(zip(da, db)):
        x, y = int(x), int(y)
        used = carry
        if op == "+":
            s = x + y + used
            digit, carry = s % 10, s // 10
            lines.append(f"{x}+{y}" + (f"+{used}" if used else "") + f"={s}, carry {carry}.")
        else:
            s = x - y - used
            digit, carry = s % 10, int(s < 0)
            expr = f"{x}-{y}" + (f"-{used}" if used else "")
            lines.append(f"{expr}<0, so {10 + s}, borrow 1." if s < 0 else f"{expr}={s}, borrow 0.")
        digits.append(digit)
        if rng.random() < flaw_p:  # drawn every column, so flaw_p never changes which problems are made
            carry = 0  # the flaw: the carry/borrow is announced but never used
    if op == "+" and carry:
        lines.append(f"Lead with carry {carry}.")
        digits.append(carry)
    return lines, int("".join(map(str, digits[::-1])))


def gen_add(rng, level, flaw_p=0.0):
    a, b = _digits(level + 1, rng), _digits(rng.randint(1, level + 1), rng)
    a, b = max(a, b), min(a, b)
    lines, result = _column_steps(a, b, "+", rng, flaw_p)
    sol = "\n".join(lines + [f"So {a} + {b} = {result}."])  # columns right to left
    return f"Compute {a} + {b}.", sol, str(a + b), str(result)


def gen_sub(rng, level, flaw_p=0.0):
    a, b = _digits(level + 1, rng), _digits(rng.randint(1, level + 1), rng)
    a, b = max(a, b), min(a, b)
    lines, result = _column_steps(a, b, "-", rng, flaw_p)
    sol = "\n".join(lines + [f"So {a} - {b} = {result}."])
    return f"Compute {a} - {b}.", sol, str(a - b), str(result)


def gen_mul(rng, level, flaw_p=0.0):
    a, b = _digits(level + 1, rng), rng.randint(2, 9)
    lines, digits, carry = [], [], 0
    for x in map(int, str(a)[::-1]):  # digits right to left
        p = x * b + carry
        lines.append(f"{x}*{b}" + (f"+{carry}" if carry else "") + f"={p}, carry {p // 10}.")
        digits.append(p % 10)
        carry = p // 10
        if rng.random() < flaw_p:
            carry = 0  # the flaw, as in _column_steps (after the last digit: no "Lead with carry" line)
    if carry:
        lines.append(f"Lead with carry {carry}.")
        digits.extend(int(c) for c in str(carry)[::-1])
    result = int("".join(map(str, digits[::-1])))
    lines.append(f"So {a} * {b} = {result}.")
    return f"Compute {a} * {b}.", "\n".join(lines), str(a * b), str(result)


def _lin(a, b, var="x"):
    """Format a*var + b with signs as a person writes them: 'x', '-x', '3x - 5', '7'."""
    s = "" if a == 0 else (var if a == 1 else "-" + var if a == -1 else f"{a}{var}")
    if b or not s:
        s = (f"{s} {'+' if b > 0 else '-'} {abs(b)}" if s else str(b))
    return s


def gen_linear(rng, level, flaw_p=0.0):
    x = rng.randint(-10, 10)
    a = rng.choice([k for k in range(-9, 10) if k not in (0,)])
    b = rng.randint(-20, 20)
    c = rng.choice([k for k in range(-9, 10) if k != a]) if level >= 2 else 0
    d = a * x + b - c * x
    lines = []
    if c:
        lines.append(f"Move {_lin(c, 0)} to the left side: {_lin(a - c, b)} = {d}.")
    if b:
        lines.append(f"{'Subtract' if b > 0 else 'Add'} {abs(b)} {'from' if b > 0 else 'to'} both sides: {_lin(a - c, 0)} = {d - b}.")
    if a - c != 1:
        lines.append(f"Divide both sides by {a - c}: x = {x}.")
    lines.append(f"So x = {x}.")
    return f"Solve {_lin(a, b)} = {_lin(c, d)}.", "\n".join(lines), str(x)


def gen_quadratic(rng, level, flaw_p=0.0):
    lo, hi = (1, 9) if level == 1 else (-12, 12)  # level 1: small positive roots; 2: any sign; 3: leading coef.
    r1, r2 = sorted(rng.randint(lo, hi) for _ in range(2))
    k = rng.randint(2, 4) if level >= 3 else 1
    p, q = -(r1 + r2), r1 * r2  # x^2 + p x + q = (x - r1)(x - r2)
    poly = ("" if k == 1 else str(k)) + "x^2" + (f" {'+' if k * p > 0 else '-'} {_lin(abs(k * p), 0)}" if p else "") \
        + (f" {'+' if k * q > 0 else '-'} {abs(k * q)}" if q else "")
    lines = [f"Divide both sides by {k}: x^2{_sgn(p, 'x')}{_sgn(q)} = 0."] if k > 1 else []
    lines.append(f"We need two numbers with product {q} and sum {-p}: {r1} and {r2}.")
    lines.append(f"So (x{_sgn(-r1)})(x{_sgn(-r2)}) = 0.")
    roots = [r1] if r1 == r2 else [r1, r2]
    lines.append("So x = " + " or x = ".join(map(str, roots)) + ".")
    return f"Solve: {poly} = 0", "\n".join(lines), ", ".join(map(str, roots))


def _sgn(v, var=""):
    """' + 3x' / ' - 3x' / '' for a term of value v (coefficient 1 drops the digit when var is given)."""
    if v == 0:
        return ""
    mag = var if (abs(v) == 1 and var) else f"{abs(v)}{var}"
    return f" {'+' if v > 0 else '-'} {mag}"


def _tex_frac(num, den):
    g = math.gcd(num, den)
    num, den = num // g, den // g
    if den == 1:
        return str(num)
    return ("-" if num < 0 else "") + f"\\frac{{{abs(num)}}}{{{den}}}"


def gen_fraction(rng, level, flaw_p=0.0):
    a, c = rng.randint(1, 9), rng.randint(1, 9)
    b, d = rng.randint(2, 12), rng.randint(2, 12)
    op = rng.choice("+-*" if level >= 2 else "+-")
    if op in "+*" and (a, b) > (c, d):  # one order per pair: a test question's commuted twin is the same question
        a, b, c, d = c, d, a, b
    lines = []
    if op == "*":
        num, den = a * c, b * d
        lines.append(f"Multiply the numerators and the denominators: {a}*{c} / {b}*{d} = {num}/{den}.")
    else:
        den = b * d // math.gcd(b, d)
        x, y = a * den // b, c * den // d
        num = x + y if op == "+" else x - y
        lines.append(f"The common denominator of {b} and {d} is {den}.")
        lines.append(f"{a}/{b} = {x}/{den} and {c}/{d} = {y}/{den}.")
        lines.append(f"{x}/{den} {op} {y}/{den} = {num}/{den}.")
    g = math.gcd(num, den)
    lines.append(f"{num}/{den} is in lowest terms." if g == 1 else f"Divide by gcd({abs(num)}, {den}) = {g}: {num // g}/{den // g}.")
    return f"Compute {a}/{b} {op} {c}/{d}.", "\n".join(lines), _tex_frac(num, den)


FAMILIES = {"add": gen_add, "sub": gen_sub, "mul": gen_mul, "linear": gen_linear,
            "quadratic": gen_quadratic, "fraction": gen_fraction}


def make_problem(family, rng, level=1, flaw_p=0.0):
    """One synthetic problem as a dict: question, solution (worked steps), answer (gold), family, level, and
    final: the answer the worked solution reaches, which a flawed demonstration boxes (it differs from the gold
    answer exactly when a dropped carry changed the result; rewards and evaluation always use the gold)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; valid: {sorted(FAMILIES)}")
    q, sol, ans, *reached = FAMILIES[family](rng, level, flaw_p)  # only add/sub/mul can be flawed
    return {"question": q, "solution": sol, "answer": ans, "final": reached[0] if reached else ans,
            "family": family, "level": level}


def _csv(s):
    return [x.strip() for x in str(s).split(",") if x.strip()]


def synthetic_problems(n, families, levels, seed, flaw_p=0.0, exclude=frozenset()):
    """n distinct problems (by question), never one whose question is in `exclude`. Deterministic in seed."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    families, levels = _csv(families) if isinstance(families, str) else families, \
        [int(v) for v in (_csv(levels) if isinstance(levels, str) else levels)]
    for tries in range(20 * n + 1000):  # a family whose small space is used up yields its share to the others
        if len(out) == n:
            return out
        p = make_problem(rng.choice(families), rng, rng.choice(levels), flaw_p)
        if p["question"] not in seen:
            seen.add(p["question"])
            out.append(p)
    if len(out) == n:
        return out
    raise ValueError(f"could only make {len(out)} distinct problems of {families} at levels {levels}; ask for fewer")


def synthetic_splits(cfg):
    """(train, test): the test set comes first with its own seed; train excludes every test question.
    The test set is always clean (flaw_p applies only to the training demonstrations)."""
    test = synthetic_problems(cfg.n_test, cfg.families, cfg.levels, seed=cfg.seed + 1)
    train = synthetic_problems(cfg.n_train, cfg.families, cfg.levels, seed=cfg.seed, flaw_p=cfg.flaw_p,
                               exclude={p["question"] for p in test})
    return train, test
