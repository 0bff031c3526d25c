"""scripts/*.py and bench.py's device flag: the checks a user runs by hand must fail when their targets fail, and say
why when they cannot run."""
import json
import os
import sys

import pytest
import torch

import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def write_rows(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_check_reward_real_judges_each_set_by_its_own_size(tmp_path, capsys):
    """2 misses in 100 MATH rows break the 1% target, however many GSM8K rows there are (it used to take 1% of
    the GSM8K rows for both)."""
    import check_reward_real
    write_rows(tmp_path / "math500_test.jsonl",
               [{"solution": f"so \\boxed{{{i + 1000 if i < 2 else i}}}", "answer": str(i)} for i in range(100)])
    write_rows(tmp_path / "gsm8k_test.jsonl", [{"answer": f"so\n#### {i}"} for i in range(300)])
    assert check_reward_real.main(["--data-dir", str(tmp_path), "--shifts", "1"]) == 1
    assert "TARGETS NOT MET" in capsys.readouterr().out
    write_rows(tmp_path / "math500_test.jsonl",  # one miss in 100: within 1%
               [{"solution": f"so \\boxed{{{i + 1000 if i < 1 else i}}}", "answer": str(i)} for i in range(100)])
    assert check_reward_real.main(["--data-dir", str(tmp_path), "--shifts", "1"]) == 0
    assert "targets met" in capsys.readouterr().out


def test_compare_math_verify_explains_a_missing_math_verify(capsys):
    import compare_math_verify
    if compare_math_verify.parse is not None:  # installed here: nothing to explain
        return
    assert compare_math_verify.main([]) == 2
    assert "pip install math-verify" in capsys.readouterr().out


def test_bench_refuses_a_device_it_cannot_use(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, words in (("cuda", "no CUDA device"), ("mps", "cpu or cuda"), ("gpu", "not a device")):
        with pytest.raises(SystemExit):
            bench.main(["--device", device, "--skip", "train", "sample", "grpo"])
        assert words in capsys.readouterr().err


def test_ab_speed_loads_each_revisions_own_imports(capsys):
    """grpo.py's `from model import ...` and `from config import ...` must see the same revision's files, not the
    ones already imported from disk; a bad revision or --reps 0 is a one-line error."""
    import ab_speed
    import config
    import grpo
    import model
    old_model, old_grpo = ab_speed.load_version("HEAD", "test_imports")
    folder = os.path.dirname(old_model.__file__)
    assert folder != ROOT
    assert os.path.dirname(old_grpo.stop_ids.__code__.co_filename) == folder
    assert os.path.dirname(old_grpo.check_rules.__code__.co_filename) == folder
    assert sys.modules["model"] is model and sys.modules["config"] is config  # restored for everyone else
    assert sys.modules["grpo"] is grpo
    with pytest.raises(SystemExit, match="no-such-revision"):
        ab_speed.load_version("no-such-revision", "test_bad")
    with pytest.raises(SystemExit):
        ab_speed.main(["--old", "HEAD", "--reps", "0"])
    assert "--reps must be at least 1" in capsys.readouterr().err


def test_check_reward_real_judges_gsm8k_by_its_own_size(tmp_path, monkeypatch, capsys):
    """S2: 2 misses in 100 GSM8K rows break the 1% target however many MATH-500 rows there are."""
    import check_reward_real
    real = check_reward_real.score
    monkeypatch.setattr(check_reward_real, "score",
                        lambda sol, gold, times: 0.0 if "MISS" in sol else real(sol, gold, times))
    write = lambda path, rows: path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write(tmp_path / "math500_test.jsonl", [{"solution": f"so \\boxed{{{i}}}", "answer": str(i)} for i in range(300)])
    write(tmp_path / "gsm8k_test.jsonl", [{"answer": f"so{' MISS' if i < 2 else ''}\n#### {i}"} for i in range(100)])
    assert check_reward_real.main(["--data-dir", str(tmp_path), "--shifts", "1"]) == 1
    assert "TARGETS NOT MET" in capsys.readouterr().out
