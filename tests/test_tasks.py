"""tasks.py and the data built from it: every line of a worked solution is true, splits, the test set under
flaw_p, pretraining documents."""
import math
import re
from fractions import Fraction

import sympy

import data as D
import mathparse as MP


def test_pretrain_documents_chat_frac_extremes():
    probs = D.synthetic_problems(20, "add,linear", "1", seed=0)
    assert D.pretrain_documents(probs, chat_frac=0.0) == [D.format_document(p) for p in probs]
    chat = [D.format_prompt(p["question"], "r1") + D.format_completion(p["solution"], p["final"], "r1") for p in probs]
    assert D.pretrain_documents(probs, chat_frac=1.0) == chat


def test_tokenizer_corpus_holds_every_template():
    p = D.synthetic_problems(1, "add", "1", seed=0)[0]
    assert list(D.tokenizer_corpus([p])) == [
        D.format_document(p),
        D.format_prompt(p["question"], "plain") + D.format_completion(p["solution"], p["final"], "plain"),
        D.format_prompt(p["question"], "r1") + D.format_completion(p["solution"], p["final"], "r1")]


def test_parse_data_spec_is_the_test_split_and_honours_exclude():  # D16, D17, T13
    cfg = D.DataConfig(families="add,sub", levels="1", n_train=50, n_test=30, seed=5)
    train, test = D.synthetic_splits(cfg)
    assert D.parse_data_spec("synthetic", 30, seed=5, levels="1", families="add,sub") == test
    excl = {p["question"] for p in test[:10]}
    got = D.parse_data_spec("synthetic", 30, seed=5, levels="1", families="add,sub", exclude=excl)
    assert len(got) == 30 and not excl & {p["question"] for p in got}
    assert [p for p in test if p["question"] not in excl] == got[:20]  # same stream, the excluded skipped


def test_synthetic_test_split_is_clean_under_flaw_p():
    clean = D.synthetic_splits(D.DataConfig(families="add,sub,mul", n_train=50, n_test=100))[1]
    train, test = D.synthetic_splits(D.DataConfig(families="add,sub,mul", n_train=50, n_test=100, flaw_p=1.0))
    assert test == clean and all(p["final"] == p["answer"] for p in test)
    assert any(p["final"] != p["answer"] for p in train)


def test_quadratic_level_two_has_roots_of_both_signs():
    probs = D.synthetic_problems(100, "quadratic", "2", seed=0)
    roots = [int(r) for p in probs for r in p["answer"].split(", ")]
    assert min(roots) < 0 < max(roots)
    lvl1 = [int(r) for p in D.synthetic_problems(30, "quadratic", "1", seed=0) for r in p["answer"].split(", ")]
    assert all(1 <= r <= 9 for r in lvl1)


def _lhs(s, x):
    """The value of a generated expression in x (3x+5, x^2-x+6, (x+2)(x-3)) at x, read by mathparse."""
    kind, expr = MP.parse_answer(s)[:2]
    assert kind == "expr", s
    return expr.subs(sympy.Symbol("x"), x)


def _check_solution(p):
    """Every intermediate line of a clean worked solution is arithmetically true."""
    lines, fam, ans = p["solution"].splitlines(), p["family"], p["answer"]
    if fam in ("add", "sub", "mul"):
        for ln in lines:
            if m := re.fullmatch(r"(\d)\+(\d)(?:\+(\d))?=(\d+), carry (\d)\.", ln):
                x, y, u, s, c = (int(g or 0) for g in m.groups())
                assert s == x + y + u and c == s // 10, ln
            elif m := re.fullmatch(r"(\d)-(\d)(?:-(\d))?<0, so (\d+), borrow 1\.", ln):
                x, y, u, t = (int(g or 0) for g in m.groups())
                assert x - y - u < 0 and t == 10 + x - y - u, ln
            elif m := re.fullmatch(r"(\d)-(\d)(?:-(\d))?=(\d+), borrow 0\.", ln):
                x, y, u, s = (int(g or 0) for g in m.groups())
                assert s == x - y - u >= 0, ln
            elif m := re.fullmatch(r"(\d)\*(\d)(?:\+(\d))?=(\d+), carry (\d+)\.", ln):
                x, b, c, q, k = (int(g or 0) for g in m.groups())
                assert q == x * b + c and k == q // 10, ln
            else:
                assert re.fullmatch(r"Lead with carry \d\.|So \d+ [-+*] \d+ = \d+\.", ln), ln
    elif fam == "linear":
        x, rhs = int(ans), re.fullmatch(r"Solve .+ = (.+)\.", p["question"]).group(1)
        prev = int(rhs) if re.fullmatch(r"-?\d+", rhs) else None  # "Solve 3x = 6." divides at once
        for ln in lines:
            if m := re.fullmatch(r"Divide both sides by (-?\d+): x = (-?\d+)\.", ln):
                assert Fraction(prev, int(m.group(1))) == x == int(m.group(2)), (ln, p)
            elif m := re.fullmatch(r".*: (.+) = (-?\d+)\.", ln):
                assert _lhs(m.group(1), x) == int(m.group(2)), (ln, p)
                prev = int(m.group(2))
            else:
                assert ln == f"So x = {x}.", ln
    elif fam == "quadratic":
        roots = [int(r) for r in ans.split(", ")]
        for ln in lines:
            if m := re.fullmatch(r"Divide both sides by \d: (.+) = 0\.", ln):
                assert all(_lhs(m.group(1), r) == 0 for r in roots) and _lhs(m.group(1), 100) != 0, ln
            elif m := re.fullmatch(r"We need two numbers with product (-?\d+) and sum (-?\d+): "
                                   r"(-?\d+) and (-?\d+)\.", ln):
                q, s, r1, r2 = map(int, m.groups())
                assert r1 * r2 == q and r1 + r2 == s and {r1, r2} == set(roots), ln
            elif m := re.fullmatch(r"So \(x(.*)\)\(x(.*)\) = 0\.", ln):
                f = lambda v: _lhs(f"(x{m.group(1)})*(x{m.group(2)})", v)
                assert all(f(r) == 0 for r in roots) and f(100) != 0, ln
            else:
                assert ln == "So x = " + " or x = ".join(map(str, roots)) + ".", ln
        assert not re.search(r"(?<![0-9])1x", p["solution"] + p["question"])  # coefficient 1 is not written
    elif fam == "fraction":
        a, b, op, c, d = re.fullmatch(r"Compute (\d+)/(\d+) ([-+*]) (\d+)/(\d+)\.", p["question"]).groups()
        a, b, c, d = map(int, (a, b, c, d))
        for ln in lines:
            if m := re.fullmatch(r"Multiply the numerators and the denominators: "
                                 r"(\d+)\*(\d+) / (\d+)\*(\d+) = (\d+)/(\d+)\.", ln):
                n1, n2, d1, d2, num, den = map(int, m.groups())
                assert (n1, n2, d1, d2) == (a, c, b, d) and num == a * c and den == b * d, ln
            elif m := re.fullmatch(r"The common denominator of (\d+) and (\d+) is (\d+)\.", ln):
                assert int(m.group(3)) == math.lcm(b, d), ln
            elif m := re.fullmatch(r"(\d+)/(\d+) = (\d+)/(\d+) and (\d+)/(\d+) = (\d+)/(\d+)\.", ln):
                v = list(map(int, m.groups()))
                assert (v[0], v[1], v[4], v[5]) == (a, b, c, d), ln
                assert Fraction(v[0], v[1]) == Fraction(v[2], v[3]) and Fraction(v[4], v[5]) == Fraction(v[6], v[7]), ln
            elif m := re.fullmatch(r"(\d+)/(\d+) ([-+]) (\d+)/(\d+) = (-?\d+)/(\d+)\.", ln):
                x, dx, o, y, dy, num, den = m.groups()
                assert dx == dy == den and int(num) == (int(x) + int(y) if o == "+" else int(x) - int(y)), ln
            elif m := re.fullmatch(r"Divide by gcd\((\d+), (\d+)\) = (\d+): (-?\d+)/(\d+)\.", ln):
                n, dd, g, n2, d2 = map(int, m.groups())
                assert g == math.gcd(n, dd) > 1 and n2 * g * (1 if n2 >= 0 else -1) == n and d2 * g == dd, ln
            else:
                assert re.fullmatch(r"-?\d+/\d+ is in lowest terms\.", ln), ln
                num, den = map(int, ln.split()[0].split("/"))
                assert math.gcd(num, den) == 1


def test_every_worked_solution_line_is_true():
    probs = D.synthetic_problems(1500, "add,sub,mul,linear,quadratic,fraction", "1,2,3", seed=11)
    for p in probs:
        _check_solution(p)


def test_level_1_operands_have_two_digits():
    for p in D.synthetic_problems(300, "add,sub,mul", "1", seed=0):
        a = int(re.fullmatch(r"Compute (\d+) [-+*] \d+\.", p["question"]).group(1))
        assert 10 <= a <= 99, p["question"]


def test_flaw_p_also_flaws_multiplication():
    flawed = D.synthetic_problems(200, "mul", "2", seed=1, flaw_p=1.0)
    assert sum(p["final"] != p["answer"] for p in flawed) > 100


def test_levels_shape_the_problems_as_documented():
    """What a level means (tasks.py, configs/demo.toml): add/sub pair a (level+1)-digit number with one of 1 to
    level+1 digits, the larger first (one order per pair: no commuted twin across the splits); mul multiplies a
    (level+1)-digit number by 2-9; linear has x on both sides from level 2; quadratic a leading coefficient at
    level 3 only; fraction multiplies from level 2."""
    for level in (1, 2, 3):
        for fam in ("add", "sub"):
            qs = [p["question"] for p in D.synthetic_problems(200, fam, str(level), seed=level)]
            pairs = [tuple(map(int, re.fullmatch(r"Compute (\d+) [-+] (\d+)\.", q).groups())) for q in qs]
            assert all(len(str(a)) == level + 1 and a >= b for a, b in pairs), (fam, level)
            assert {len(str(b)) for _, b in pairs} == set(range(1, level + 2)), (fam, level)
        muls = [re.fullmatch(r"Compute (\d+) \* (\d)\.", p["question"]).groups()
                for p in D.synthetic_problems(200, "mul", str(level), seed=level)]
        assert {len(a) for a, _ in muls} == {level + 1} and {int(b) for _, b in muls} == set(range(2, 10)), level
    rhs = lambda level: [p["question"].split(" = ")[1] for p in D.synthetic_problems(100, "linear", level, seed=0)]
    assert all(re.fullmatch(r"-?\d+\.", r) for r in rhs("1")) and sum("x" in r for r in rhs("2")) > 50
    lead = lambda level: {re.match(r"Solve: (\d*)x\^2", p["question"]).group(1)
                          for p in D.synthetic_problems(30, "quadratic", level, seed=0)}
    assert lead("1") == lead("2") == {""} and lead("3") == {"2", "3", "4"}
    ops = lambda level: {p["question"].split()[2] for p in D.synthetic_problems(100, "fraction", level, seed=0)}
    assert ops("1") == {"+", "-"} and ops("2") == {"+", "-", "*"}
