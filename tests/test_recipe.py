"""configs/grpo_1.5b.toml: it loads, its memory plan fits 80 GB at the real shapes, and the same recipe runs end to
end (GRPO, then eval.py) on a tiny Qwen2-layout checkpoint whose tokenizer.json carries the ChatML chat format."""
import json
import os

import pytest
import torch

import eval as E
import memory
import train as T
from model import ModelConfig, Transformer
from test_data import _hf_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "grpo_1.5b.toml")
# Qwen2.5-Math-1.5B's config.json as our ModelConfig (tied embeddings; DeepSeek-R1-Distill-Qwen-1.5B unties them)
QWEN_1_5B = dict(vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2, hidden_dim=8960,
                 max_seq_len=4096, attn_bias=True, norm_eps=1e-6)


def test_recipe_loads_with_the_paper_values():
    cfg = T.load_config(RECIPE)
    assert cfg.stage == "grpo" and cfg.data.template == "chat"
    assert cfg.train.lr == 1e-6 and cfg.grpo.beta == 0.04 and cfg.grpo.max_new_tokens == 1024  # DeepSeekMath
    assert cfg.grpo.group_size == 16 and cfg.train.batch_size * cfg.grpo.group_size == 512  # half of DSM's 1024
    assert cfg.grpo.num_iterations == 1 and cfg.train.bf16 and cfg.train.activation_checkpointing
    assert cfg.train.batch_size % cfg.grpo.rollout_prompts == 0


@pytest.mark.parametrize("tie", [True, False])
def test_recipe_memory_plan_fits_80gb(tie):
    cfg = T.load_config(RECIPE)
    mcfg = ModelConfig(**QWEN_1_5B, tie_embeddings=tie)
    with torch.device("meta"):
        N = Transformer(mcfg).num_params()
    assert round(N / 1e9, 2) == (1.54 if tie else 1.78)  # the published sizes
    S = 250 + cfg.grpo.max_new_tokens  # a long GSM8K/MATH chat prompt + the completion budget
    est = memory.estimate(mcfg, N, cfg.grpo.micro_batch_size * S, amp=True, checkpointing=True, frozen_params=N,
                          kv_rows=cfg.grpo.rollout_prompts * cfg.grpo.group_size, kv_len=S)
    assert memory.peak(est) < 0.7 * 80e9  # room for the estimate's roughness and the allocator
    with pytest.raises(MemoryError):  # without activation checkpointing and with bigger micro-batches it would not
        memory.check(memory.estimate(mcfg, N, 16 * S, amp=True, frozen_params=N), 80e9)


def test_recipe_end_to_end_on_a_tiny_qwen_checkpoint(tmp_path):
    init = tmp_path / "qwen"
    init.mkdir()
    _hf_tokenizer(init, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  {"bos_token": None, "eos_token": "<|endoftext|>"})
    vocab = T.D.load_tokenizer(str(init)).vocab_size
    torch.manual_seed(0)
    Transformer(ModelConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64,
                            max_seq_len=512, attn_bias=True, norm_eps=1e-6, tie_embeddings=True)).save_pretrained(init)
    rows = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    T.main(["--config", RECIPE, "--init", str(init), "--out_dir", str(out), "--data.train_file", str(data),
            "--data.test_file", str(data), "--train.max_steps=2", "--train.batch_size=2", "--train.eval_n=2",
            "--train.max_new_tokens=4", "--train.save_every=2", "--grpo.group_size=2", "--grpo.max_new_tokens=4",
            "--grpo.rollout_prompts=1", "--grpo.micro_batch_size=2", "--train.lr=1e-3"])
    run = json.load(open(out / "final" / "run_config.json"))
    assert run["data"]["template"] == "qwen"  # "chat" resolved from the tokenizer and recorded for eval.py
    assert os.path.exists(out / "final" / "tokenizer.json")
    tok = T.D.load_tokenizer(str(out / "final"))
    im_end, endoftext = (tok.tk.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>"))
    saved = json.load(open(out / "final" / "config.json"))  # transformers' generate() stops where ours does
    assert (saved["eos_token_id"], saved["pad_token_id"], saved["bos_token_id"]) == (im_end, tok.pad_id, None)
    assert json.load(open(out / "final" / "generation_config.json"))["eos_token_id"] == [im_end, endoftext]
    samples = [json.loads(r) for r in open(out / "samples.jsonl")]
    assert samples and all("<|im_start|>" not in s["completion"] for s in samples)
    report = E.main(["--ckpt", str(out / "final"), "--data", str(data), "--n", "2", "--k", "1,2",
                     "--max_new_tokens", "4", "--out", str(tmp_path / "eval.json")])
    assert report["template"] == "qwen" and report["n_problems"] == 4 and "pass@2" in report["sampled"]
