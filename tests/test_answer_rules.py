"""Answer extraction and equivalence rules of reward.py that a policy could otherwise game or that decide which
string is the gold: lists are multisets, the gold's kind decides, numbers compare tightly, long answers only match
exactly."""
import reward
from reward import accuracy_reward, extract_answer, is_equiv


def test_a_hashes_line_without_a_digit_is_not_the_answer():
    """R04: '#### **Conclusion**' (no digit, not caught by _HEADING) must not be read as the answer."""
    assert extract_answer("#### **Conclusion**\nThe answer is 18.") == "18"
    assert accuracy_reward("#### **Conclusion**\nThe answer is 18.", "18") == 1.0


def test_numeric_comparison_is_tight():
    """R14: REL_TOL 1e-10: a coefficient off by 1e-5 is a different answer."""
    assert not is_equiv("1.00001x", "x")


def test_lists_are_multisets():
    """R17: each gold element needs its own matching element: '1, 2, 2' is not '1, 1, 2'."""
    assert not is_equiv("1, 2, 2", "1, 1, 2")
    assert is_equiv("2, 1, 1", "1, 1, 2")


def test_accuracy_reward_reads_its_second_argument_as_the_gold():
    """R22: the gold's kind decides: a gold list '1, 2' accepts the tuple '(2, 1)', a gold tuple '(1, 2)' does not
    accept '2, 1' out of order."""
    assert accuracy_reward("\\boxed{(2, 1)}", "1, 2") == 1.0
    assert accuracy_reward("\\boxed{2, 1}", "(1, 2)") == 0.0


def test_text_answers_without_letters_or_digits_never_match():
    """R29: '\\text{?}' and '\\text{!}' both have an empty text key: not equal."""
    assert not is_equiv("\\text{?}", "\\text{!}")


def test_answers_over_max_len_are_compared_as_strings():
    """R30: a prediction over MAX_LEN characters is not normalized (bounded work): only an exact match counts."""
    from mathparse import MAX_LEN
    assert not is_equiv("5" + "\\," * MAX_LEN, "5")


def test_a_list_does_not_answer_a_single_value():
    """R31: only a one-element list or set answers a single gold value; '3, 4' (or {3, 4}) is not '3'."""
    assert not is_equiv("3, 4", "3")
    assert not is_equiv("\\{3, 4\\}", "3")
    assert is_equiv("\\{3\\}", "3")


def test_digits_split_by_any_run_of_whitespace_stay_apart():
    """Spaces are dropped except one between two digits: a run of them ("1  5", "1\\n\\n5") used to be dropped whole,
    so it equalled "15"."""
    for pred in ("1  5", "1\n\n5", "1 \t 5"):
        assert not is_equiv(pred, "15") and is_equiv(pred, "1 5")
    assert is_equiv("x  +  1", "x+1") and is_equiv("\\text{(B)}", "\\text{b}")


def test_length_cap_falls_at_max_len():
    """Past MAX_LEN characters an answer is compared as a string only (1001 here), at MAX_LEN it is still read."""
    assert reward.MAX_LEN == 1000
    assert not is_equiv("5" + "\\," * 500, "5")
    assert is_equiv("5" + "\\," * 499 + " ", "5")


def test_a_comparison_past_its_time_budget_is_unequal(monkeypatch):
    assert is_equiv("x+1", "1+x")
    monkeypatch.setattr(reward, "TIME_BUDGET", -1.0)  # over budget before the first sample point
    assert not is_equiv("x+1", "1+x")


def test_a_boxed_prediction_is_unwrapped_like_a_boxed_gold():
    """is_equiv rule 1 holds for the prediction too, not only for the gold: "\\boxed{5}" answers "5"."""
    assert is_equiv("\\boxed{5}", "5") and is_equiv("\\fbox{5}", "5")
    assert is_equiv("\\boxed{\\frac{1}{2}}", "0.5") and is_equiv("\\boxed{\\text{B}}", "B")
    assert not is_equiv("\\boxed{6}", "5")


def test_the_last_the_answer_is_wins():
    """Rule 4 reads the last 'The answer is x': a model that corrects itself is scored on its correction."""
    text = "The answer is 3. Wait, that is wrong. The answer is 4."
    assert extract_answer(text) == "4"
    assert accuracy_reward(text, "4") == 1.0 and accuracy_reward(text, "3") == 0.0


def test_a_closing_answer_tag_without_an_opening_one_is_not_an_answer_block():
    """Rule 2 needs both tags: a stray '</answer>' (no '<answer>' before it) leaves the text to rules 3 and 4,
    it does not cut an answer out of the characters before it."""
    assert extract_answer("The answer is 12.\n</answer>") == "12"
    assert extract_answer("so 9 eggs.\n#### 18\n</answer>") == "18"


def test_a_one_row_matrix_equals_the_tuple_of_its_entries():
    """A one-row matrix, like a one-column one, is the tuple of its entries, both ways; the order still counts."""
    row = "\\begin{pmatrix} 1 & 2 \\end{pmatrix}"
    assert is_equiv("(1, 2)", row) and is_equiv(row, "(1, 2)")
    assert is_equiv("(1, 2)", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}")
    assert not is_equiv("(2, 1)", row)


def test_an_expression_does_not_answer_an_equation():
    """A gold equation needs an equation: "x + 2y - 4" (no '= 0') is not "x + 2y = 4", though its sides differ by
    exactly that expression; the same equation rearranged is."""
    assert not is_equiv("x + 2y - 4", "x + 2y = 4")
    assert is_equiv("x + 2y - 4 = 0", "x + 2y = 4")


def test_numeric_comparison_is_tight_to_rel_tol():
    """REL_TOL is 1e-10: a coefficient off by 1e-9 relative, or an 8-digit decimal for sqrt(2), is a different
    answer (the sampled comparison is not a loose float check)."""
    assert not is_equiv("1.000000001x", "x")
    assert not is_equiv("1.41421356 x", "\\sqrt{2} x")
    assert is_equiv("1.00000000000001x", "x")  # below REL_TOL: rounding noise
