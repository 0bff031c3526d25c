"""
Turn one math answer string (a MATH or GSM8K gold, or what a model wrote) into sympy objects, safely and in
bounded time. reward.py decides what is equal; this file only reads answers.

    normalize(s) -> (is_text, cleaned)      strip LaTeX noise, units and separators; no sympy
    parse_answer(s) -> tagged tuple | None  a normalized answer as sympy objects, None when refused (cached)
    sample_points(symbols) -> [env, ...]    N_POINTS fixed points at which expressions are compared
    evaluate(e, env) -> complex | None      e in double precision at one point, None outside its domain
    Refuse, Timeout                         raised by normalize (unclosed \\text) and by a parse over its budget

normalize(s), for an answer of at most MAX_LEN characters (reward.py compares longer ones as strings only):
    - null bytes and ° dropped; unicode − – × · ÷ π ∞ √ become ASCII / LaTeX, thin and no-break spaces plain
    - removed: $ and \\$, \\( \\) and \\[ \\] around the answer, \\left \\right \\big.., \\displaystyle, spacing
      (\\! \\, \\; \\: \\quad ~), a trailing '.', a leading 'answer:', degrees (^\\circ, ^{\\circ}, \\degree), percent
      signs ("50\\%" = "50", not 0.5); \\dfrac \\tfrac \\cfrac become \\frac; \\mathrm \\mathbf \\boldsymbol are
      dropped around their argument (\\mathrm{e} = e), except that \\mathrm{cm} (2+ letters) is a unit
    - \\text{} \\textbf{} \\mbox{} ...: if the whole answer is text ("\\text{(B)}", "\\text{even}") it is returned
      as text (is_text True); otherwise the text is a unit and is dropped with a following ^2/^3
      ("864 \\mbox{ inches}^2" = "864"); "\\text{ or }" / "\\text{ and }" separate answers; a text that negates
      ("\\text{not }5", "\\text{all but }5": not, no, none, never, neither, nor, except, but, without) makes the
      whole answer text, so it never equals the number
    - an answer made only of words, one of them 3+ letters ("even", "Navin"), is text
    - trailing words after a space are units when they have 3+ letters or are a 2-letter unit ("5 cm" = "5",
      but "5 xy" and "2 pi" keep their letters); bare "or"/"and" separate answers
    - a number followed by a scale word is their product: "18 thousand" = "18 \\cdot 1000", "1.5 million dollars",
      "3 dozen" = 36 (dozen, hundred, thousand, million, billion, trillion); never a unit to drop
    - thousands: "10,\\!080" = "10080", "10{,}000" = "10000"; a whole answer like "1,000", "1 000" or "1,000,000.5" loses its commas, but
      inside brackets a comma always separates ("(1,000, 2)" is a 3-tuple)

parse_answer(s) returns one of these tagged tuples (e: a sympy expression):
    ("expr", e)                   one expression
    ("list", (e, ...), names)     a bare comma list: "2, 3", "x=2 \\text{ or } x=3"; names: each element's
                                  variable ("x") or None
    ("set", (e, ...), names)      \\{..\\}
    ("seq", "()", (e, ...))       (..), [..], (..], [..) with commas, tagged with its two brackets
    ("union", (seq, ...))         A \\cup B ..., every part a seq
    ("matrix", ((e, ...), ...))   pmatrix / bmatrix / vmatrix / matrix, rows of one length
    ("eq", a - b)                 an equation a = b
    ("named", "x", parsed)        "x = 5", "x \\in [1,2]", "f(x) = 2x": a one-variable (or function) left side,
                                  kept as a name
A one-variable left side is taken off when the variable does not occur on the right ("x = 2x - 5" stays an
equation); in a list, item by item, and the name goes to the list's names. "a \\pm b" is the list
(a+b, a-b); an integer then \\frac of integers is a mixed number, anywhere but as an unbraced exponent
(1\\frac{4}{5} = 9/5, 1\\frac{4}{5}+1 = 14/5, -2\\frac12 = -5/2; 10^2\\frac12 = 50).

Expressions: our own recursive-descent parser (class _Parser) for numbers (decimals are exact rationals;
1.5e3), + - * / ^ **, implicit multiplication (2x, 2\\sqrt2, (a+5)(b+2); but two numbers side by side, "3 4",
are refused), \\frac{a}{b} \\frac12, \\sqrt[n]{x}, \\pi, \\infty, \\cdot \\times \\div, single letters with
subscripts (i is the imaginary unit, e is Euler's number), greek letters, |x|, n! (n <= 300), \\binom, \\sin
\\cos \\tan \\cot \\sec \\csc \\arcsin \\arccos \\arctan (also written \\sin^{-1} \\cos^{-1} \\tan^{-1}) \\sinh
\\cosh \\tanh \\ln \\log \\log_b \\exp and e^x, odd roots of negative numbers as real roots (\\sqrt[3]{-8} = -2),
and base-n numerals "52_8" (kept as their own symbol: "52_8" != "42"). It builds sympy objects directly; the
functions are opaque sympy functions (see _F), which evaluate() computes in doubles.

Refused (parse_answer returns None): nesting deeper than MAX_DEPTH, more than MAX_ATOMS atoms or MAX_ITEMS
elements, number literals over MAX_DIGITS digits, exact numbers over MAX_BITS bits, checked before they are
built (9^{9^{9^9}}, 2^{100000}), radicals whose total radicand bits times the lcm of their root degrees exceed
MAX_RADICAL_BITS (sympy factors radicands when it merges them; this also refuses 2^{1/3000}: only numeric
radicands count, so x^{1/3000} parses), roots and
non-integer powers of expressions of degree over MAX_DEGREE in their variables or in function values
(\\sqrt{(x^{1000}+2)^2}, \\sqrt{((\\sin 1)^{400})^{3/2}}), a sum of constants that sympy leaves unevaluated and
that is 0 in doubles, or beyond them (\\sqrt2+\\sqrt3-\\sqrt{5+2\\sqrt6}: a sign query on such a zero factors a
minimal polynomial, exponential in its radicals), function arguments and non-numeric exponents over 1e4 in
absolute value at the sample points (sin(e^{e^{e^5}})), unknown commands and characters, and anything that
evaluates to nan or zoo (1/0).

Safety and time: nothing from the input reaches eval/exec/sympify/parse_expr. Time is bounded by
construction: the caps keep every sympy operation small, and evaluate() runs in doubles (O(1) per node). As
a second line, a wall-clock budget (TIME_BUDGET per parse; reward.py gives each comparison the same) is
checked between operations and raises Timeout; it needs no signal, so it works in any thread and in worker
processes.
"""
import cmath
import math
import random
import re
import time
from functools import lru_cache

import sympy
from sympy.core.function import AppliedUndef

MAX_LEN = 1000  # characters of one extracted answer; longer ones are compared as strings only
MAX_DEPTH = 50  # bracket / \frac nesting
MAX_ATOMS = 300  # numbers, letters and commands in one expression
MAX_ITEMS = 64  # elements of a list, set, tuple or matrix
MAX_DIGITS = 100  # digits in one number literal
MAX_BITS = 20_000  # size of any exact integer we let sympy build (about 6,000 decimal digits)
MAX_RADICAL_BITS = 2048  # (total bits of radicands) x (lcm of root degrees): what sympy may factor
MAX_DEGREE = 32  # degree in the variables of a base raised to a non-integer power: what sympy may expand
TIME_BUDGET = 0.3  # seconds per parse and per comparison, checked between sympy operations
N_POINTS = 4  # random points for expressions with variables


class Refuse(ValueError):
    """The input is outside our grammar or over a cap: fall back to string equality."""


class Timeout(Exception):
    """The wall-clock budget ran out; never cached, the comparison answers False."""


# ---- string normalization

_UNICODE = {"\x00": "", "−": "-", "–": "-", "×": "\\times ", "·": "\\cdot ", "÷": "\\div ", "π": "\\pi ",
            "∞": "\\infty ", "√": "\\sqrt", "°": "", "\u2009": " ", "\u00a0": " "}
_SPACING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\.?|\\(?:displaystyle|textstyle)"
                      r"(?![A-Za-z])|(?<!\\)\\[!,]")
_WIDE_SPACING = re.compile(r"(?<!\\)\\[;: ]|\\q?quad(?![A-Za-z])|~")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|textup|mbox)\s*\{")
_TEX_COMMA = re.compile(r"(" + _TEXT_CMD.pattern + r",\})|\{,\}")  # LaTeX's unspaced comma, unless it is a \text
_STYLE_CMD = re.compile(r"\\(?:mathrm|mathbf|mathit|boldsymbol|operatorname)(?![A-Za-z])")
_TEXT_POWER = re.compile(r"\s*\^\s*(?:\{\s*[0-9]\s*\}|[0-9])")
_UNIT_WORD = r"(?:[A-Za-z]{3,}|cm|mm|km|dm|ft|in|yd|mi|oz|lb|kg|mg|ml|mL|hr|cc)(?![A-Za-z])"  # not "xy", "pi"
_SCALES = {"dozen": 12, "hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_SCALE_WORD = re.compile(r"(^\s*|=\s*)([+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?)\s*(" + "|".join(_SCALES)
                         + r")s?(?![A-Za-z])", re.IGNORECASE)  # "1.5 million", "18 thousand dollars", "x = 5 million"
_SCALE_TEXT = re.compile(r"\s*(" + "|".join(_SCALES) + r")s?(?![A-Za-z])", re.IGNORECASE)  # \text{ million dollars}
_UNITS_TAIL = re.compile(r"(?:\s+" + _UNIT_WORD + r"(?:\^\{?[0-9]\}?)?)+\s*$")
_THOUSANDS_TEX = re.compile(r"([0-9]),\\!\s*(?=[0-9]{3}(?![0-9]))")
_THOUSANDS = re.compile(r"[+-]?[0-9]{1,3}(?:(?:,[0-9]{3})+|(?: [0-9]{3})+)(?:\.[0-9]+)?")  # 1,000 or 1 000
_WORDS = re.compile(r"[A-Za-z\s().,'-]*")
_NEGATION = re.compile(r"(?<![A-Za-z])(?:not|no|none|never|neither|nor|except|but|without)(?![A-Za-z])", re.IGNORECASE)


@lru_cache(maxsize=4096)
def normalize(s):
    """Normalize one answer string. Returns (is_text, cleaned)."""
    for a, b in _UNICODE.items():
        s = s.replace(a, b)
    s = s.strip()
    if s.startswith("\\[") and s.endswith("\\]") or s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2]
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"^(?:final\s+)?answer\s*:", "", s.strip(), flags=re.IGNORECASE)
    s = _THOUSANDS_TEX.sub(r"\1", _TEX_COMMA.sub(lambda m: m.group(1) or ",", s))  # "10{,}000"; "\text{,}" stays
    s = _WIDE_SPACING.sub(" ", _SPACING.sub("", s))
    s = _DEGREES.sub("", s).replace("\\%", "").replace("%", "")
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", "\\\\frac", s)
    s = re.sub(r"\\mathrm\s*\{\s*([A-Za-z]{2,})\s*\}", r"\\text{\1}", s)  # \mathrm{cm} is a unit
    s = _STYLE_CMD.sub("", s)  # but \mathrm{e} is e: the braces stay as a group
    whole = s
    s, texts = _split_text(s)
    if not re.sub(r"[\s().,]", "", s) and texts:  # the whole answer is text
        return True, " ".join(texts).strip()
    if any(_NEGATION.search(t) for t in texts):  # "\text{not }5" is not 5: no unit negates
        return True, whole.strip()
    s = re.sub(r"(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])", ",", s)
    s = s.strip().rstrip(".").strip()
    if _WORDS.fullmatch(s) and re.search(r"[A-Za-z]{3}", s):  # words: "even", "Navin"
        return True, s
    s = _SCALE_WORD.sub(lambda m: f"{m.group(1)}{m.group(2).replace(',', '')} \\cdot {_SCALES[m.group(3).lower()]}", s)
    tail = _UNITS_TAIL.search(s)
    if tail and s[:tail.start()].strip():
        s = s[:tail.start()]
    s = s.strip().rstrip(".,").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    return False, s


def _split_text(s):
    """Take out \\text{..}-like groups: '\\text{ or }' becomes ',', others are returned as a list."""
    out, texts, i = [], [], 0
    while True:
        m = _TEXT_CMD.search(s, i)
        if not m:
            out.append(s[i:])
            return "".join(out), texts
        end = _close_of(s, m.end() - 1)
        if end < 0:
            raise Refuse("unclosed \\text")
        out.append(s[i:m.start()])
        content = s[m.end():end]
        if content.strip() in ("or", "and", ","):
            out.append(" , ")
        else:
            scale = _SCALE_TEXT.match(content)  # a scale word is a number's, not a unit: 1.5\text{ million}
            if scale:
                out.append(f" {scale.group(1)} ")
                content = content[scale.end():]
            texts.append(content)
            out.append(" ")  # 2\text{ hours }30 is two numbers, not 230
        power = _TEXT_POWER.match(s, end + 1)  # a unit's ^2
        i = power.end() if power else end + 1


def _close_of(s, i, opens="{", closes="}"):
    """Index of the bracket closing the one at s[i], or -1."""
    depth = 0
    for k in range(i, len(s)):
        if s[k] in opens:
            depth += 1
        elif s[k] in closes:
            depth -= 1
            if depth == 0:
                return k
    return -1


# ---- structure: lists, sets, tuples, intervals, unions, matrices, equations

_VAR_PREFIX = re.compile(r"\s*(\{?[A-Za-z](?:_\{?[A-Za-z0-9]{1,4}\}?)?\}?|[A-Za-z]\(\s*[A-Za-z]\s*\))?\s*"
                         r"(?:=|\\in(?![A-Za-z]))")  # x, x_1, or a function f(x)
_NAMES_PREFIX = re.compile(r"\s*\(\s*([A-Za-z](?:\s*,\s*[A-Za-z])+)\s*\)\s*=")  # (x, y) = ...
_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix)\}(.*)\\end\{\1\}", re.DOTALL)


@lru_cache(maxsize=4096)
def parse_answer(s):
    """Parse a cleaned answer into a tagged tuple, or None when refused. Timeouts propagate (uncached)."""
    try:
        return _structure(s, time.perf_counter() + TIME_BUDGET)
    except (Refuse, ArithmeticError, ValueError, TypeError, RecursionError, IndexError):
        return None


def _strip_var(s):
    """'x = 5' -> ('x', '5'): a one-variable left side, kept as a name (so 'x = -2' is not 'y = -2'), and what it
    equals. Nothing is taken when the variable is also on the right ('x = 2x - 5' is an equation)."""
    t = _NAMES_PREFIX.match(s)  # "(x, y) = (3, -1)" is the pair (3, -1); "(y, x) = ..." stays as written
    if t:
        names, rest = re.sub(r"[\s,]", "", t.group(1)), s[t.end():]
        letters = re.sub(r"\\[A-Za-z]+", "", rest)
        if list(names) == sorted(set(names)) and rest.strip() and not any(c in letters for c in names + "="):
            return None, rest
    m = _VAR_PREFIX.match(s)
    rest = s[m.end():] if m else s
    if not m or not rest.strip() or "=" in rest:
        return None, s
    if m.group(1) is None:  # "= 5"
        return None, rest
    name = re.sub(r"[\s{}]", "", m.group(1))
    if name[0] in re.sub(r"\\[A-Za-z]+", "", rest):  # letters of commands (\exp) do not count
        return None, s
    return name, rest


def _structure(s, deadline):
    """A possibly named answer: ("named", name, parsed) for 'x = 5', else the parsed answer."""
    name, s = _strip_var(s)
    parsed = _unnamed(s.strip(), deadline)
    return parsed if name is None else ("named", name, parsed)


def _unnamed(s, deadline):
    if not s:
        raise Refuse("empty")
    m = _MATRIX.fullmatch(s)
    if m:
        rows = [r for r in m.group(2).split("\\\\") if r.strip()]
        cells = [[_expr(c, deadline) for c in r.split("&")] for r in rows]
        if not cells or len({len(r) for r in cells}) != 1 or len(rows) * len(cells[0]) > MAX_ITEMS:
            raise Refuse("matrix shape")
        return ("matrix", tuple(map(tuple, cells)))
    parts = _split_top(s, "\\cup")
    if len(parts) > 1:
        seqs = tuple(_structure(p, deadline) for p in parts)
        if any(q[0] != "seq" for q in seqs):
            raise Refuse("union of non-intervals")
        return ("union", seqs)
    if s.startswith("\\{") and s.endswith("\\}") and _close_of(s, 1, "{([", "})]") == len(s) - 1:
        return ("set", *_elements(_split_top(s[2:-2], ","), deadline))
    items = _split_top(s, ",")
    if s[0] in "([" and s[-1] in ")]" and _close_of(s, 0, "{([", "})]") == len(s) - 1:
        inner = _split_top(s[1:-1], ",")
        if len(inner) > 1:
            return ("seq", s[0] + s[-1], tuple(_expr(x, deadline) for x in inner))
    if len(items) > 1 or "\\pm" in s or "\\mp" in s:
        return ("list", *_elements(items, deadline))
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        return ("eq", _expr(lhs, deadline) - _expr(rhs, deadline))
    return ("expr", _expr(s, deadline))


def _elements(items, deadline):
    """Unordered elements and their names (None where unnamed): 'x=' prefixes become names, 'a \\pm b' expands to
    a+b and a-b."""
    out, names = [], []
    for item in items:
        name, item = _strip_var(item)
        if "\\pm" in item or "\\mp" in item:
            a, _, b = re.split(r"(\\pm|\\mp)(?![A-Za-z])", item, maxsplit=1)
            out += [_expr(a + "+" + b, deadline), _expr(a + "-" + b, deadline)]  # \frac{1 \pm \sqrt5}{2}
            names += [name, name]
        else:
            out.append(_expr(item, deadline))
            names.append(name)
        if len(out) > MAX_ITEMS:
            raise Refuse("too many items")
    return tuple(out), tuple(names)


def _split_top(s, sep):
    """Split at `sep` outside any brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i) and s[i - 1:i] != "\\":
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(s[start:])
    if len(parts) > MAX_ITEMS:
        raise Refuse("too many items")
    return parts


def _expr(s, deadline):
    v = _Parser(s, deadline).parse()
    if v.has(sympy.nan, sympy.zoo):
        raise Refuse("undefined value")
    return v


# ---- the expression parser

# Functions are sympy *undefined* functions: sympy's own sin/log/Abs/exp evaluate themselves and answer
# assumption queries through as_real_imag() and evalf(), which can take minutes on nested input. Ours are
# opaque to sympy (sin(x) - sin(x) still cancels) and evaluated by _walk in doubles.
_CMATH = {"sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan, "cot": lambda z: 1 / cmath.tan(z),
          "sec": lambda z: 1 / cmath.cos(z), "csc": lambda z: 1 / cmath.sin(z), "arcsin": cmath.asin,
          "arccos": cmath.acos, "arctan": cmath.atan, "sinh": cmath.sinh, "cosh": cmath.cosh,
          "tanh": cmath.tanh, "ln": cmath.log, "exp": cmath.exp, "abs": abs}
_F = {name: sympy.Function(name) for name in _CMATH}
_FUNCS = (set(_CMATH) - {"abs"}) | {"log"}  # \log is the natural log, \log_b x = ln x / ln b
_GREEK = set("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi "
             "rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega".split())
_ATOM_CMDS = {"frac", "sqrt", "pi", "infty", "binom"} | _GREEK | set(_FUNCS)
_NUM = re.compile(r"([0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]{1,4}))?")
_MIXED_FRAC = re.compile(r"\s*\\frac\s*(?:\{\s*([0-9]{1,20})\s*\}|([0-9]))\s*(?:\{\s*([0-9]{1,20})\s*\}|([0-9]))")
_SUB = re.compile(r"_(?:\{\s*([A-Za-z0-9]{1,8})\s*\}|([A-Za-z0-9]))")


class _Parser:
    """Recursive descent over one expression, building sympy objects directly (no eval, no sympify).

    expr := term (('+'|'-') term)*        term := unary (('*'|'/'|\\cdot|\\times|\\div) unary | power)*
    unary := ('-'|'+')* power              power := postfix ('^' unary-ish exponent)?
    postfix := atom '!'*                   atom := number | letter | (expr) | [expr] | {expr} | |expr| | \\cmd
    """

    def __init__(self, s, deadline):
        self.s, self.i, self.depth, self.atoms = s, 0, 0, 0
        self.radical_bits, self.radical_q = 0, 1  # see pow()
        self.deadline = deadline

    def parse(self):
        v = self.expr()
        self.skip()
        if self.i != len(self.s):
            raise Refuse(f"unexpected {self.s[self.i:self.i + 10]!r}")
        return v

    # -- scanning
    def skip(self):
        while self.i < len(self.s) and self.s[self.i] in " \t\n\r":
            self.i += 1

    def peek(self):
        self.skip()
        return self.s[self.i:self.i + 1]

    def eat(self, tok):
        self.skip()
        if not self.s.startswith(tok, self.i):
            return False
        after = self.s[self.i + len(tok):self.i + len(tok) + 1]
        if tok[-1].isalpha() and after.isalpha():  # "\cdot" must not match "\cdots"
            return False
        self.i += len(tok)
        return True

    def expect(self, tok):
        if not self.eat(tok):
            raise Refuse(f"expected {tok}")

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Refuse("too deep")
        if time.perf_counter() > self.deadline:
            raise Timeout()

    def starts_atom(self):
        c = self.peek()
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+)", self.s[self.i:self.i + 20])
            return bool(m) and m.group(1) in _ATOM_CMDS
        return c != "" and (c in "0123456789.([{" or (c.isascii() and c.isalpha()))

    # -- grammar
    def expr(self):
        self.enter()
        terms = [self.term()]
        while True:
            if self.eat("+"):
                terms.append(self.term())
            elif self.eat("-"):
                terms.append(-self.term())
            else:
                break
        self.depth -= 1
        if sum(_max_bits(t) for t in terms) > MAX_BITS:  # sympy brings fractions to one denominator
            raise Refuse("sum too large")
        v = _check(sympy.Add(*terms))  # one Add: folding them one by one is quadratic in sympy
        if v.is_Add and v.is_number:  # a zero sympy does not see (sqrt2 + sqrt3 - sqrt(5 + 2 sqrt6)): a sign query
            z = evaluate(v, {})  # on it (a root or power of it) computes its minimal polynomial, exponential in
            scale = sum(abs(evaluate(t, {}) or 0) for t in v.args)  # its radicals: minutes for 6 such groups
            if z is None or abs(z) <= 1e-9 * scale:
                raise Refuse("a constant sum that is numerically 0, or too large to evaluate")
        return v

    def term(self):
        factors = [self.unary()]
        while True:
            if self.eat("*") or self.eat("\\cdot") or self.eat("\\times"):
                factors.append(self.unary())
            elif self.eat("/") or self.eat("\\div"):
                factors.append(1 / self.unary())
            elif self.starts_atom():  # implicit multiplication: 2x, 2\sqrt{2}, (a+5)(b+2)
                if self.peek() in "0123456789." and self.s[:self.i].rstrip()[-1:] in "0123456789.":
                    raise Refuse("two numbers side by side")  # "3 4" or "2 1/2" is no product
                factors.append(self.power())
            else:
                break
        if sum(_max_bits(f) for f in factors) > MAX_BITS:  # sympy multiplies the numbers out
            raise Refuse("product too large")
        return _check(sympy.Mul(*factors))

    def unary(self):
        sign = 1
        while True:
            if self.eat("-"):
                sign = -sign
            elif not self.eat("+"):
                break
        v = self.power()
        return -v if sign < 0 else v

    def power(self):
        base = self.postfix()
        if not (self.eat("^") or self.eat("**")):
            return base
        self.enter()
        e = self.unary()  # right-associative: 2^3^2 = 2^9; LaTeX x^2y is x^2 * y
        self.depth -= 1
        return self.pow(base, e)

    def postfix(self):
        v = self.atom()
        while self.eat("!"):
            if not (v.is_Integer and 0 <= v <= 300):
                raise Refuse("factorial")
            v = sympy.factorial(v)
        return v

    def atom(self):
        self.enter()
        self.atoms += 1
        if self.atoms > MAX_ATOMS:
            raise Refuse("too many atoms")
        c = self.peek()
        if c != "" and c in "0123456789.":
            v = self.number()
        elif c.isascii() and c.isalpha():
            self.i += 1
            v = self.symbol(c)
        elif c != "" and c in "([{":
            self.i += 1
            v = self.expr()
            self.expect(")]}"["([{".index(c)])
        elif c == "|":
            self.i += 1
            v = self.expr()
            v = abs(v) if v.is_Rational else _F["abs"](v)
            self.expect("|")
        elif c == "\\":
            v = self.command()
        else:
            raise Refuse(f"unexpected {c!r}")
        self.depth -= 1
        return v

    def number(self):
        m = _NUM.match(self.s, self.i)
        whole, frac, exp = m.group(1), m.group(2) or "", m.group(3)
        if not whole and not frac:
            raise Refuse("bad number")
        if len(whole) + len(frac) > MAX_DIGITS:
            raise Refuse("too many digits")
        self.i = m.end()
        sub = _SUB.match(self.s, self.i)
        if sub and not frac and not exp:  # 52_8: a numeral in base 8 stays its own symbol
            self.i = sub.end()
            return sympy.Symbol(f"{int(whole)}_{sub.group(1) or sub.group(2)}")
        v = sympy.Rational(int(whole + frac or "0"), 10 ** len(frac))
        # an integer then \frac of integers is a mixed number (MATH's 1\frac{4}{5} = 9/5), unless the integer is an
        # unbraced exponent or the fraction has one (10^2\frac12 = 50, 1\frac45^2 = 16/25 as before)
        mixed = _MIXED_FRAC.match(self.s, self.i) if whole and not frac and exp is None else None
        if mixed and self.s[:m.start()].rstrip()[-1:] != "^" and not self.s[mixed.end():].lstrip().startswith("^"):
            num, den = int(mixed.group(1) or mixed.group(2)), int(mixed.group(3) or mixed.group(4))
            if den == 0:
                raise Refuse("zero denominator")
            self.i = mixed.end()
            return v + sympy.Rational(num, den)
        if exp is not None:
            if abs(int(exp)) > 400:
                raise Refuse("exponent too large")
            v = v * sympy.Integer(10) ** int(exp)
        return v

    def symbol(self, c):
        sub = _SUB.match(self.s, self.i)
        if sub:
            self.i = sub.end()
            return sympy.Symbol(f"{c}_{sub.group(1) or sub.group(2)}")
        return {"i": sympy.I, "e": sympy.E}.get(c) or sympy.Symbol(c)

    def arg(self):
        """One argument of \\frac or \\sqrt: a {group}, or a single digit, letter or command (\\frac12)."""
        c = self.peek()
        if c == "{":
            self.i += 1
            v = self.expr()
            self.expect("}")
            return v
        if c != "" and c in "0123456789":
            self.i += 1
            return sympy.Integer(int(c))
        if c.isascii() and c.isalpha():
            self.i += 1
            return self.symbol(c)
        if c == "\\":
            return self.command()
        raise Refuse("bad argument")

    def command(self):
        m = re.match(r"\\([A-Za-z]+|.)", self.s[self.i:self.i + 30])
        if not m:
            raise Refuse("bad command")
        name = m.group(1)
        self.i += m.end()
        if name == "frac":
            num = self.arg()
            return _check(num / self.arg())
        if name == "binom":
            n, k = self.arg(), self.arg()
            if not (n.is_Integer and k.is_Integer and 0 <= n <= 1000):
                raise Refuse("binomial")
            return sympy.binomial(n, k)
        if name == "sqrt":
            index = sympy.Integer(2)
            if self.eat("["):
                index = self.expr()
                self.expect("]")
            radicand = self.arg()
            if index.is_Integer and index % 2 == 1 and radicand.is_Number and radicand < 0:
                return -self.pow(-radicand, 1 / index)  # the real root: \sqrt[3]{-8} = -2, as MATH means it
            return self.pow(radicand, 1 / index)
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in _GREEK:
            return sympy.Symbol(name)
        if name in _FUNCS:
            return self.function(name)
        raise Refuse(f"unknown command \\{name}")

    def function(self, name):
        base = self.arg() if name == "log" and self.eat("_") else None
        power = None
        if self.eat("^"):  # \sin^2 x
            power = self.arg()
            if power == -1:  # \sin^{-1} x is arcsin x, not 1 / sin x
                if name not in ("sin", "cos", "tan"):
                    raise Refuse(f"inverse of \\{name}")
                name, power = "arc" + name, None
        if self.peek() in ("(", "{"):
            x = self.atom()
        else:  # \sin 2x: the argument is the run of factors up to the next operator or function
            x = self.power()
            while self.starts_atom() and not re.match(r"\\(?:%s)(?![A-Za-z])" % "|".join(_FUNCS),
                                                       self.s[self.i:self.i + 10]):
                x = _check(x * self.power())
        if not _moderate(x) or (base is not None and not _moderate(base)):
            raise Refuse("function of a huge argument")
        if name == "log":
            v = _F["ln"](x) if base is None else _check(_F["ln"](x) / _F["ln"](base))
        else:
            v = _F[name](x)
        return self.pow(v, power) if power is not None else v

    def pow(self, base, e):
        """base**e, refusing results too large to build (power towers, 9^{9^9}) before sympy builds them."""
        if time.perf_counter() > self.deadline:
            raise Timeout()
        if base == sympy.E:  # e^x is our opaque exp(x), like \exp(x)
            if not _moderate(e):
                raise Refuse("huge exponent")
            return _F["exp"](e)
        if e.is_Number:
            if not e.is_Rational:
                raise Refuse("non-finite exponent")
            bits = _max_bits(base)
            if abs(e) > 10_000 or bits * max(1, math.ceil(abs(e))) > MAX_BITS:
                raise Refuse("power too large")
            if not e.is_Integer:  # also for symbolic bases: (N/x)^{1/3} splits off N^{1/3}
                # sympy factors radicands, and when it merges radicals (2^{1/2} 3^{1/2} = 6^{1/2}) the number
                # it factors can reach (product of radicands)^(common denominator): bound that product
                nested = math.lcm(1, *(x.exp.q for x in base.atoms(sympy.Pow) if x.exp.is_Rational))
                self.radical_q = math.lcm(self.radical_q, e.q * nested)
                self.radical_bits += sum(_bits(a) for a in base.atoms(sympy.Rational))
                if self.radical_bits * self.radical_q > MAX_RADICAL_BITS:
                    raise Refuse("radicals too large")
        elif not _moderate(e):
            raise Refuse("huge exponent")
        if not e.is_Integer and (base.free_symbols or base.has(AppliedUndef)) and _degree(base) > MAX_DEGREE:
            # sympy asks whether such a base is real, expanding re/im of (re x + i im x)^n: minutes at n = 1000
            raise Refuse("root or power of a high-degree expression")
        return _check(sympy.Pow(base, e))


def _degree(v):
    """A bound on v's degree in its variables: a power's is its base's times |exponent| (1 for a symbolic one),
    a product's the sum of its factors', anything else's the largest of its arguments'."""
    if v.is_Symbol or isinstance(v, AppliedUndef):  # sin(1) is as opaque to sympy as x
        return 1
    if v.is_Pow:
        return _degree(v.base) * (abs(v.exp) if v.exp.is_Number else 1)
    if v.is_Mul:
        return sum(_degree(a) for a in v.args)
    return max((_degree(a) for a in v.args), default=0)


def _bits(r):
    return max(abs(r.p).bit_length(), r.q.bit_length())


def _max_bits(v):
    return max((_bits(a) for a in v.atoms(sympy.Rational)), default=1)


def _moderate(v, limit=1e4):
    """|v| <= limit at our sample points, in doubles. Function arguments and symbolic exponents must be: sympy
    evaluates them numerically on its own (sin(e^{e^9}) needs ~e^{e^9} bits of precision)."""
    for env in sample_points(v.free_symbols):
        z = evaluate(v, env)
        if z is None or abs(z) > limit:
            return False
    return True


def _check(v):
    """Refuse exact numbers that grew too large through + - * /."""
    coeff = v.args[0] if (v.is_Add or v.is_Mul) and v.args and v.args[0].is_Rational else v
    if coeff.is_Rational and _bits(coeff) > MAX_BITS:
        raise Refuse("number too large")
    return v



# ---- numeric evaluation

def sample_points(symbols):
    """N_POINTS fixed pseudo-random values per variable, of both signs (so sqrt(x^2) != x), or one point
    when there are no variables."""
    if not symbols:
        return [{}]
    rng = random.Random(1234)
    names = sorted(symbols, key=str)
    points = [{x: rng.choice((-1, 1)) * rng.uniform(0.5, 2.5) for x in names} for _ in range(N_POINTS)]
    for i, x in enumerate(names):  # a variable of one sign at every point would make |x| = x: flip one point
        if N_POINTS > 1 and len({points[j][x] > 0 for j in range(N_POINTS)}) == 1:
            points[i % N_POINTS][x] *= -1
    return points


_CONSTANTS = {sympy.pi: math.pi, sympy.E: math.e, sympy.I: 1j}


def evaluate(e, env):
    """e as a Python complex in double precision: O(1) per node, so bounded by the size caps. None if it
    overflows, divides by zero or leaves the domain."""
    try:
        v = _walk(e, env)
    except (ArithmeticError, ValueError):
        return None
    return v if cmath.isfinite(v) else None


def _walk(e, env):
    if e.is_Rational:
        return complex(e.p / e.q)
    if e in _CONSTANTS:
        return complex(_CONSTANTS[e])
    if e.is_Symbol:
        return complex(env[e])
    if e.is_Add:
        return sum((_walk(a, env) for a in e.args), 0j)
    if e.is_Mul:
        return math.prod((_walk(a, env) for a in e.args), start=1 + 0j)
    if e.is_Pow:
        base, x = _walk(e.args[0], env), _walk(e.args[1], env)
        if x.imag == 0 and x.real == int(x.real) and abs(x.real) <= 64:
            return base ** int(x.real)  # exact-ish integer powers, and 0^2 without a complex log
        return base ** x
    if isinstance(e, AppliedUndef) and len(e.args) == 1:
        return complex(_CMATH[e.func.__name__](_walk(e.args[0], env)))
    if e.func == sympy.exp:  # sympy turns e*e into its own exp(2)
        return cmath.exp(_walk(e.args[0], env))
    raise ValueError(f"cannot evaluate {e.func}")
