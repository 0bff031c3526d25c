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


def test_compare_math_verify_reports_a_set_without_negatives(monkeypatch, capsys):
    """--shifts 0 gives no negative pairs: the report shows 0/0, where it divided by zero."""
    import compare_math_verify
    monkeypatch.setattr(compare_math_verify, "mv_equiv", lambda pred, gold, wrap: True)
    compare_math_verify.compare_real("toy", ["so \\boxed{1}"], ["1"], lambda a, b: True, [])
    out = capsys.readouterr().out
    assert "toy positives scored 1: ours 1/1 = 100.00%" in out and "negatives scored 0: ours 0/0 = 0.00%" in out


def test_bench_vs_hf_names_a_device_it_cannot_use(capsys):
    import bench_vs_hf
    for device, words in (("cpux", "--device 'cpux': not a device"), ("mps", "cpu or cuda")):
        with pytest.raises(SystemExit):
            bench_vs_hf.main(["--device", device])
        assert words in capsys.readouterr().err


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


def test_random_hf_model_makes_a_folder_that_train_py_runs(tmp_path, capsys):
    """scripts/random_hf_model.py: a Qwen2-layout folder (q/k/v biases, tied, bf16) with a ChatML tokenizer that
    HFTokenizer recognises, which configs/grpo_1.5b.toml's grpo stage then trains for a step; a second run into the
    same folder is refused rather than overwriting it."""
    import random_hf_model
    import data as D
    import train as T
    from model import Transformer
    rows = [{"question": f"What is {i} plus {3 * i}?", "answer": f"{i} + {3 * i} = {4 * i}\n#### {4 * i}"}
            for i in range(1, 60)]
    write_rows(tmp_path / "train.jsonl", rows)
    out = tmp_path / "rnd"
    random_hf_model.main(["--shape", "tiny", "--text", str(tmp_path / "train.jsonl"), "--out", str(out),
                          "--tokenizer-vocab", "400"])
    m = Transformer.from_pretrained(str(out))
    assert m.tok_embeddings.weight.dtype == torch.bfloat16 and m.layers[0].attention.wqkv.bias is not None
    assert {k: getattr(m.cfg, k) for k in random_hf_model.SHAPES["tiny"]} == random_hf_model.SHAPES["tiny"]
    tok = D.load_tokenizer(str(out))
    assert tok.vocab_size == 400 and tok.chat_template == "qwen" and tok.decode(tok.encode("12 + 36")) == "12 + 36"
    T.main(["--config", os.path.join(ROOT, "configs", "grpo_1.5b.toml"), "--init", str(out),
            "--out_dir", str(tmp_path / "run"), "--data.train_file", str(tmp_path / "train.jsonl"),
            "--data.test_file", str(tmp_path / "train.jsonl"), "--train.device=cpu", "--train.max_steps=1",
            "--train.batch_size=2", "--grpo.group_size=2", "--grpo.rollout_prompts=2", "--grpo.micro_batch_size=4",
            "--grpo.max_new_tokens=8", "--train.max_new_tokens=8", "--train.eval_n=2"])
    assert os.path.exists(tmp_path / "run" / "final" / "model.safetensors")
    with pytest.raises(SystemExit):
        random_hf_model.main(["--shape", "tiny", "--text", str(tmp_path / "train.jsonl"), "--out", str(out)])
    assert "already holds a model" in capsys.readouterr().err


def test_bench_vs_hf_finds_parity_and_prints_ratios(capsys):
    """scripts/bench_vs_hf.py on CPU at the 4M size: greedy parity with transformers is 8/8, and every measurement
    prints its ratio line; with one turn each, the ratio is ours' rate over transformers' (not the inverse)."""
    import re
    import bench_vs_hf
    bench_vs_hf.main(["--size", "S", "--device", "cpu", "--train", "2x32", "--generate", "2x8", "--reps", "1"])
    out = capsys.readouterr().out
    assert "8/8 completions equal" in out and "max abs diff" in out
    assert "train b2x32: ours" in out and "generate 2x8: ours" in out and out.count("median ratio ours/hf") == 2
    for ours, hf, ratio in re.findall(r"ours (\d+) [^,]*, transformers (\d+) [^,]*, median ratio ours/hf ([\d.]+)",
                                      out):
        assert float(ratio) == pytest.approx(int(ours) / int(hf), rel=0.02, abs=0.01)


def test_bench_vs_hf_parity_counts_only_equal_completions():
    """Two models with different weights: transformers' greedy completions are not ours, and parity says 0/8."""
    import bench_vs_hf
    from bench import SIZES
    torch.manual_seed(0)
    ours, hf = bench_vs_hf.pair(SIZES["S"], torch.device("cpu"), 256)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.5)
    assert bench_vs_hf.parity(ours, hf, torch.device("cpu"), None, SIZES["S"]["vocab_size"]) == 0


@pytest.mark.parametrize("argv,words", [(["--train", "8x2x3"], "'8x2x3' in '8x2x3': shapes are AxB"),
                                        (["--generate", "0x4"], "'0x4' in '0x4': shapes are AxB"),
                                        (["--train", "8"], "'8' in '8': shapes are AxB"),
                                        (["--reps", "0", "--device", "cpu"], "--reps must be at least 1")])
def test_bench_vs_hf_refuses_bad_arguments(argv, words, capsys):
    import bench_vs_hf
    with pytest.raises(SystemExit):
        bench_vs_hf.main(argv)
    assert words in capsys.readouterr().err


def test_random_hf_model_refuses_bad_arguments_and_writes_nothing(tmp_path, capsys):
    """A missing text file or a tokenizer too small for its bytes is refused before the folder is made; without
    --tokenizer-vocab the tiny shape gets a tokenizer no larger than its rows."""
    import random_hf_model
    write_rows(tmp_path / "t.jsonl", [{"q": f"{i} plus {i} is {2 * i}"} for i in range(50)])
    for argv, words in ((["--text", str(tmp_path / "none.jsonl")], "no such file"),
                        (["--text", str(tmp_path / "t.jsonl"), "--tokenizer-vocab", "258"], "must lie in 259..1024"),
                        (["--text", str(tmp_path / "t.jsonl"), "--tokenizer-vocab", "1025"], "must lie in 259..1024")):
        with pytest.raises(SystemExit):
            random_hf_model.main(["--shape", "tiny", "--out", str(tmp_path / "out"), *argv])
        assert words in capsys.readouterr().err and not os.path.exists(tmp_path / "out")
    random_hf_model.main(["--shape", "tiny", "--text", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "out")])
    with open(tmp_path / "out" / "tokenizer.json") as f:
        assert 259 <= len(json.load(f)["model"]["vocab"]) <= 1024


def test_peak_memory_line_reads_the_allocator(monkeypatch):
    import train as T
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: 5 * 2**29)
    assert T.peak_memory_line(torch.device("cuda")) == \
        "peak CUDA memory: 3.00 GiB allocated, 2.50 GiB reserved by the caching allocator"


def test_random_hf_model_qwen_shape_counts_qwen25_15b_parameters():
    """The qwen2.5-1.5b shape is Qwen2.5-1.5B's (model card: 1.54B): by hand, the tied embedding 151936 x 1536, and
    per layer q (1536 x 1536 + bias), k and v (256 x 1536 + bias each), o (1536 x 1536), the SwiGLU 3 x 1536 x 8960
    and two norms; plus the final norm."""
    import random_hf_model
    from model import ModelConfig, Transformer
    layer = (1536 * 1536 + 1536) + 2 * (256 * 1536 + 256) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536
    with torch.device("meta"):
        m = Transformer(ModelConfig(**random_hf_model.SHAPES["qwen2.5-1.5b"]))
    assert m.num_params() == 151936 * 1536 + 28 * layer + 1536 == 1_543_714_304
