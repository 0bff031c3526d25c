"""
Rule-based rewards for math RL: the accuracy and format rewards of DeepSeek-R1-Zero.

DeepSeek-R1 (arXiv 2501.12948) section 2.2.2 uses only rules, no neural reward model: an accuracy reward
(the final answer, in a fixed place, checked against the reference) and a format reward (reasoning inside
<think>..</think>, then the answer). DeepSeekMath (arXiv 2402.03300) trains on GSM8K and MATH answers.

    extract_answer(text) -> str | None      the final answer written in a completion
    is_equiv(pred, gold) -> bool            mathematical equivalence; never raises, bounded time
    accuracy_reward(completion, gold)       1.0 if extract_answer(completion) is equivalent to gold, else 0.0
    format_reward(completion, think_in_prompt=False) -> 1.0 or 0.0

extract_answer, first rule that finds something wins:
    1. the last \\boxed{...} or \\fbox{...} (nested braces; an unclosed one is skipped in favour of an earlier
       one); also `\\boxed 5`, which takes the characters up to the next space or `$`
    2. the content of the last <answer>...</answer> (x when it reads 'The answer is x', as in rule 4)
    3. GSM8K style: the text after the last '####' (exactly four) whose line contains a digit and does not begin
       with a word, so markdown headings ('#### Step 1: ...', '#### 2. Totals') don't count
    4. 'The answer is x' / 'The final answer is x' (any case): x is the math of a leading $x$ or \\(x\\), else it
       runs to the end of the line or a sentence-ending '.', without markdown ** or _ around it. A bare
       'Answer: x' line is not read: the plain template's prompt ends in 'Answer:', so such a line in a completion
       is a question and answer the model made up after its own

format_reward: 1.0 iff the completion, stripped of surrounding whitespace, is exactly
    <think> ... </think> <whitespace only> <answer> non-empty ... </answer>
with each of the four tags exactly once and nothing but whitespace outside them. Special tokens such as EOS
must be removed when decoding (skip_special_tokens). When the prompt template already ends with "<think>"
(R1-Zero: "Assistant: <think>"), pass think_in_prompt=True: the completion then starts inside the think block
and must not open another one.

is_equiv(pred, gold), in order:
    1. a \\boxed{} inside an answer is unwrapped; answers over MAX_LEN characters are compared as strings only
    2. both sides go through mathparse.normalize (LaTeX noise, units, thousands separators: the rules are
       there); equal normalized strings, spaces aside (but not between two digits: "1 5" is not "15"), are equal
    3. text answers (normalize says which) are compared as text: lowercase, letters and digits only, and a
       leading minus ("\\text{(B)}" = "\\text{b}", "-abc" != "abc"); when only one side is text, its content is first
       read as an answer, so "\\text{-5}" is -5 and never matches 5, and words against math keep signs,
       operators and commas ("cot x" = "\\cot x", but "-cot x" != "\\cot x" and "x, y, z" != "xyz")
    4. plain decimals and \\frac{int}{int} are compared as exact fractions, without sympy
    5. otherwise both sides go through mathparse.parse_answer and are compared as below. An answer it refuses
       only matches its exact normalized string, so a gold answer that cannot be parsed never gives 1.0 to
       everything.
Parsed answers (the gold's kind decides):
    - bare comma lists ("2, 3", "x=2 \\text{ or } x=3") and sets \\{..\\} are unordered multisets; a one-element
      list or set also equals its element
    - (..), [..], (..], [..) with commas are ordered sequences whose brackets must match: tuples and intervals
      (open/closed ends matter); a gold "(a, b)" also accepts a bare "a, b" in the same order, unless a name
      repeats ("x = a, x = b" are two solutions) or the gold holds \\infty (an interval, not a pair); when every
      element is named, in the order of the names ("y = 3, x = -1" is (-1, 3)); "(x, y) = (3, -1)" is (3, -1)
    - A \\cup B ... is an unordered collection of intervals
    - pmatrix / bmatrix / vmatrix / matrix: same shape, cell by cell; a one-row or one-column matrix also
      equals the tuple "(..)" of its entries
    - "x = 5" (or "f(x) = 2x") is its value with a name: it equals "5", and "x = 5" but not "y = 5"; in lists and
      sets too, a named element matches only an unnamed one or one of the same name ("x=2, y=3" is not "x=3, y=2")
    - two equations a1 = b1 and a2 = b2 are equal when a1 - b1 = k (a2 - b2) for a constant k != 0; a named
      value is the equation name = value when it meets an equation or a value of another name
      ("y = 2x + 3" is "2x - y + 3 = 0" and "x = y/2" is "y = 2x", but still not "x = 2x + 3")
    - two expressions are equal when sympy's automatic canonical form of their difference is exactly 0 (so
      exact rationals are compared exactly: 1/3 != 0.3333333333333), or, when that difference is not a plain
      number, when they agree at mathparse.sample_points (variables of both signs) in double precision, to
      REL_TOL relative plus ABS_TOL absolute (rounding noise around 0: so x / 10^13 passes for 0, a price we pay
      for sin(pi) = 0). We never call simplify(): it has no time bound.

Safety and time: nothing from the inputs reaches eval/exec/sympify/parse_expr. Every math string is parsed
by our own recursive-descent parser in mathparse.py, whose docstring says what it refuses and how its time
is bounded; each comparison gets the same wall-clock TIME_BUDGET.
"""
import re
import time
from fractions import Fraction

import sympy

from mathparse import (MAX_DIGITS, MAX_LEN, TIME_BUDGET, Refuse, Timeout, evaluate, normalize, parse_answer,
                       sample_points)

REL_TOL = 1e-10  # relative tolerance of the numeric comparison
ABS_TOL = 1e-12  # and its absolute tolerance, for values that are 0 up to rounding

# ----------------------------------------------------------------------------------------------------
# public API


def extract_answer(text):
    if not isinstance(text, str):
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, max(end, 0))
    if end >= 0 and start >= 0:
        inner = text[start + len("<answer>"):end].strip()
        return _the_answer_is(inner) or inner  # "<answer>The answer is 18</answer>" answers 18
    for m in reversed(_HASHES.findall(text)):
        if re.search(r"[0-9]", m) and not _HEADING.match(m):
            return m.strip()
    return _the_answer_is(text)


def _the_answer_is(text):
    """x of the last 'The (final) answer is x', to the end of its line or a sentence-ending '.', or None."""
    last = None
    for last in _THE_ANSWER.finditer(text):
        pass
    if last is None:
        return None
    line = text[last.end():last.end() + MAX_LEN].split("\n", 1)[0].lstrip(" \t:*_")
    inline = re.match(r"\$\$?((?:\\\$|[^$])+)\$|\\\((.+?)\\\)", line)  # $x$, $$x$$, \(x\) ($\$5$ too): the answer
    if inline:
        return (inline.group(1) or inline.group(2)).strip() or None
    return re.split(r"\.(?:\s|$)", line, maxsplit=1)[0].strip(" \t:$*_") or None


def is_equiv(pred, gold):
    try:
        return _is_equiv(pred, gold)
    except _FAILURES:  # a reward must never crash a training run: anything that fails is "not equal"
        return False


def accuracy_reward(completion, gold):
    pred = extract_answer(completion)
    return 1.0 if pred is not None and is_equiv(pred, gold) else 0.0


def format_reward(completion, think_in_prompt=False):
    if not isinstance(completion, str):
        return 0.0
    s = completion.strip()
    if think_in_prompt:  # the prompt ended with "<think>": the completion starts inside the block
        s = "<think>" + s
    if any(s.count(tag) != 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        return 0.0
    if not (s.startswith("<think>") and s.endswith("</answer>")):
        return 0.0
    think_end, answer_start = s.index("</think>"), s.index("<answer>")
    between = s[think_end + len("</think>"):answer_start]
    answer = s[answer_start + len("<answer>"):-len("</answer>")]
    return 1.0 if think_end < answer_start and not between.strip() and answer.strip() else 0.0


# ----------------------------------------------------------------------------------------------------
# extraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASHES = re.compile(r"(?<!#)####(?!#)([^\n]*)")
_HEADING = re.compile(r"\s*(?:[0-9]+\.\s+)?[A-Za-z]{2,}")  # "#### Step 1: ...", "#### 2. Totals"
_THE_ANSWER = re.compile(r"the[ \t]+(?:final[ \t]+)?answer[ \t]+is", re.IGNORECASE)


def _last_boxed(text):
    hits = [m.end() for m in _BOX.finditer(text)]
    if not hits:
        return None
    close, stack = {}, []  # position of each '{' -> its matching '}', one pass over the braces
    for m in re.finditer(r"[{}]", text[hits[0]:]):
        if m.group() == "{":
            stack.append(m.start() + hits[0])
        elif stack:
            close[stack.pop()] = m.start() + hits[0]
    for i in reversed(hits):
        j = re.compile(r"[ \t]*").match(text, i).end()
        if text[j:j + 1] == "{":
            if j in close:
                return text[j + 1:close[j]]
            continue  # unclosed (truncated output): fall back to an earlier box
        m = re.match(r"[^\s$]{1,%d}" % MAX_LEN, text[j:j + MAX_LEN])
        if m:  # "\boxed 5"
            return m.group()
    return None


# ----------------------------------------------------------------------------------------------------
# equivalence

_FAILURES = (Refuse, Timeout, ArithmeticError, ValueError, TypeError, RecursionError, MemoryError,
             NotImplementedError, AttributeError, IndexError, KeyError)


def _is_equiv(pred, gold):
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = str(gold)
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    if pred.strip() == gold.strip():
        return bool(gold.strip())
    if "\\boxed" in pred or "\\fbox" in pred:
        pred = extract_answer(pred) or pred
    if "\\boxed" in gold or "\\fbox" in gold:
        gold = extract_answer(gold) or gold
    if len(pred) > MAX_LEN or len(gold) > MAX_LEN:  # too long to normalize: exact match only
        return bool(gold.strip()) and pred.strip() == gold.strip()
    p_text, p = normalize(pred)
    g_text, g = normalize(gold)
    if not g:
        return False
    if _squash(p) == _squash(g):
        return True
    if p_text != g_text:  # one side is \text{..}: read its content as an answer ("\text{-5}" is -5, not 5)
        p_text, p = normalize(p) if p_text else (p_text, p)
        g_text, g = normalize(g) if g_text else (g_text, g)
    if g_text and p_text:  # text answers: "\text{(B)}" = "B", "\text{East}" = "east"
        return _text_key(p) == _text_key(g) != ""
    if g_text or p_text:  # words against math ("cot x" against "\cot x"): signs, operators and commas count
        return _signed_key(p) == _signed_key(g) != ""
    fp, fg = _fraction(p), _fraction(g)
    if fp is not None and fg is not None:  # the fast path: plain numbers, no sympy
        return fp == fg
    gs = parse_answer(g)
    ps = parse_answer(p) if gs is not None else None
    if gs is None or ps is None:
        return False
    return _same(ps, gs, time.perf_counter() + TIME_BUDGET)


def _squash(s):
    """Spaces out, except one between two digits: "x + 1" = "x+1", "1  5" = "1 5", but "1 5" is not "15"."""
    return re.sub(r"(?<![0-9]) | (?![0-9])", "", re.sub(r"\s+", " ", s))  # a run of whitespace is one space


def _text_key(s):
    """Letters and digits ("(B)" = "b"), and a leading minus sign: "-abc" is not "abc"."""
    s = s.strip().lower()
    return ("-" if s.startswith("-") else "") + re.sub(r"[^a-z0-9]", "", s)


def _signed_key(s):
    """Letters, digits, signs, operators and commas: "-cot x" is not "\\cot x", nor "x, y, z" "xyz"."""
    return re.sub(r"[^a-z0-9+\-*/^=,|<>]", "", s.lower())


_NUMBER = re.compile(r"-?(?:[0-9]{1,%d}(?:\.[0-9]{0,%d})?|\.[0-9]{1,%d})" % ((MAX_DIGITS,) * 3))
_SIMPLE_FRAC = re.compile(r"(-?)\\frac\{([0-9]{1,%d})\}\{([0-9]{1,%d})\}" % (MAX_DIGITS, MAX_DIGITS))


def _fraction(s):
    """Plain decimals and \\frac{int}{int} as exact Fractions, else None."""
    s = _squash(s)
    if _NUMBER.fullmatch(s):
        return Fraction(s.rstrip("."))
    m = _SIMPLE_FRAC.fullmatch(s)
    if m and int(m.group(3)) != 0:
        return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
    return None



# ---- comparing parsed answers

def _same(p, g, deadline):
    """Is the parsed prediction p equal to the parsed gold g? The gold's kind decides the rule."""
    if time.perf_counter() > deadline:
        raise Timeout()
    kp, kg = p[0], g[0]
    if "named" in (kp, kg):  # "x = 5" answers "5", but "x = -2" is not "y = -2"
        if kp == kg and p[1] != g[1] or "eq" in (kp, kg):  # both as equations: y = 2x is x = y/2, not y = 2z
            a, b = _equation(p), _equation(g)
            return a is not None and b is not None and _proportional(a, b)
        return _same(p[2] if kp == "named" else p, g[2] if kg == "named" else g, deadline)
    if kg == "expr":  # a one-element set "\\{3\\}" also answers "3"
        one = p[1] if kp == "expr" else p[1][0] if kp in ("list", "set") and len(p[1]) == 1 else None
        return one is not None and _expr_eq(one, g[1])
    if kg in ("list", "set"):
        if kp in ("list", "set"):  # "x=2, y=3" is not "x=3, y=2": named elements match only their name
            return _bag_eq(tuple(zip(*p[1:3])), tuple(zip(*g[1:3])), _named_eq, deadline)
        if kp == "expr":
            return _bag_eq((p[1],), g[1], _expr_eq, deadline)
        return kp == "seq" and kg == "list" and p[1] == "()" and _bag_eq(p[2], g[1], _expr_eq, deadline)
    if kg == "seq":
        if kp == "seq":
            return p[1] == g[1] and _all_eq(p[2], g[2])
        if g[1] != "()":  # an interval needs its brackets
            return False
        if kp == "list":  # "2, 3" for the pair (2, 3); but "x = -1, x = 1" lists two solutions, and "2, \infty"
            names = [n for n in p[2] if n is not None]  # is no pair: (2, \infty) is an interval
            if len(set(names)) < len(names) or any(e.has(sympy.oo, -sympy.oo) for e in g[2]):
                return False
            if len(names) == len(p[2]):  # every element named: "y = 3, x = -1" is the pair (x, y) = (-1, 3)
                return _all_eq(tuple(v for _, v in sorted(zip(names, p[1]), key=lambda t: t[0])), g[2])
        items = p[1] if kp == "list" else _vector(p) if kp == "matrix" else None
        return items is not None and _all_eq(items, g[2])
    if kg == "union":
        seqs = p[1] if kp == "union" else (p,) if kp == "seq" else None
        return seqs is not None and _bag_eq(seqs, g[1], lambda a, b: _same(a, b, deadline), deadline)
    if kg == "matrix":
        if kp == "seq":
            return p[1] == "()" and _vector(g) is not None and _all_eq(p[2], _vector(g))
        return kp == "matrix" and [len(r) for r in p[1]] == [len(r) for r in g[1]] and \
            _all_eq(sum(p[1], ()), sum(g[1], ()))
    if kg == "eq":
        return kp == "eq" and _proportional(p[1], g[1])
    return False


def _equation(x):
    """An equation's a - b, for ("eq", a - b) and for a named value ("named", "y", ("expr", e)) as y - e; else None."""
    if x[0] == "eq":
        return x[1]
    if x[0] == "named" and x[2][0] == "expr":
        return sympy.Symbol(x[1]) - x[2][1]
    return None


def _vector(m):
    """The entries of a one-row or one-column matrix, else None."""
    rows = m[1]
    if len(rows) == 1 or all(len(r) == 1 for r in rows):
        return sum(rows, ())
    return None


def _named_eq(a, b):
    """Elements (e, name): equal values, and equal names where both have one."""
    return (a[1] is None or b[1] is None or a[1] == b[1]) and _expr_eq(a[0], b[0])


def _all_eq(a, b):
    return len(a) == len(b) and all(_expr_eq(x, y) for x, y in zip(a, b))


def _bag_eq(a, b, eq, deadline):
    """Unordered comparison: each element of b is matched to a distinct equal element of a."""
    if len(a) != len(b):
        return False
    unused = list(a)
    for y in b:
        if time.perf_counter() > deadline:
            raise Timeout()
        hit = next((k for k, x in enumerate(unused) if eq(x, y)), None)
        if hit is None:
            return False
        unused.pop(hit)
    return True


def _expr_eq(a, b):
    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
        return False  # infinities only match structurally
    d = a - b  # sympy's automatic canonical form cancels like terms exactly
    if d.is_Number:
        return d == 0
    agree = 0
    for env in sample_points(a.free_symbols | b.free_symbols):
        va, vb = evaluate(a, env), evaluate(b, env)
        if va is None and vb is None:
            continue  # outside both domains: no information
        if va is None or vb is None or abs(va - vb) > REL_TOL * max(abs(va), abs(vb)) + ABS_TOL:
            return False
        agree += 1
    return agree > 0


def _proportional(a, b):
    """a = k*b for one constant k != 0 (the same equation written differently)."""
    if a == b or a == -b:
        return True
    ratio = None
    for env in sample_points(a.free_symbols | b.free_symbols):
        va, vb = evaluate(a, env), evaluate(b, env)
        if va is None or vb is None or (va == 0) != (vb == 0):
            return False
        if vb == 0:
            continue
        ratio = va / vb if ratio is None else ratio
        if abs(va - ratio * vb) > REL_TOL * max(abs(va), abs(ratio * vb)) + ABS_TOL:
            return False
    return ratio is not None and ratio != 0


