import pytest

from reward import accuracy_reward, extract_answer, format_reward, is_equiv


@pytest.mark.parametrize("pred,gold,ok", [("\\frac12", "0.5", True), ("2", "3", False), ("1,000", "1000", True),
                                          ("(1,000, 2)", "(1000, 2)", False)])
def test_is_equiv(pred, gold, ok):
    assert is_equiv(pred, gold) is ok


def test_rewards():
    assert extract_answer("so \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert accuracy_reward("<think>hm</think><answer>5</answer>", "5") == 1.0
    assert format_reward("<think>hm</think><answer>5</answer>") == 1.0
