"""
Write a Hugging Face folder with random weights in a real model's shape, and a tokenizer trained on a JSONL file.

The tokenizer is a byte-level BPE with Qwen's ChatML tokens, trained on the file's text. The folder is for trying a
config's memory and speed on a GPU before the real weights are downloaded. A random model's samples are noise, so
nearly every completion runs to max_new_tokens: the worst case for the KV cache and the update. Needs the optional package `tokenizers` (as data.HFTokenizer does).

    python scripts/random_hf_model.py --shape qwen2.5-1.5b --text data/gsm8k_train.jsonl --out models/random-1.5b
    python train.py --config configs/grpo_1.5b.toml --init models/random-1.5b --out_dir out/random-1.5b \
        --train.max_steps=1 --train.eval_n=64 \
        --data.train_file=data/gsm8k_train.jsonl --data.test_file=data/gsm8k_test.jsonl

train.py prints the memory plan at the start and, on CUDA, the measured peak at the end.
"""
import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import ModelConfig, Transformer  # noqa: E402

SHAPES = {  # config.json of the Hub's Qwen/Qwen2.5-1.5B (and -Math-1.5B but for its 4096 positions)
    "qwen2.5-1.5b": dict(vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2, hidden_dim=8960,
                         max_seq_len=32768, rope_theta=1e6, norm_eps=1e-6, tie_embeddings=True, attn_bias=True),
    "tiny": dict(vocab_size=1024, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=1024,
                 rope_theta=1e6, norm_eps=1e-6, tie_embeddings=True, attn_bias=True),  # for tests
}
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def texts(path):
    """Every string value of every row of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
                yield from (v for v in row.values() if isinstance(v, str))


def write_tokenizer(folder, text_file, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts(text_file), trainer)
    tk.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, f)
    return tk.get_vocab_size()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--shape", choices=list(SHAPES), default="qwen2.5-1.5b")
    p.add_argument("--text", required=True, help="JSONL file whose string fields train the tokenizer")
    p.add_argument("--out", required=True, help="folder to write (must not hold a model yet)")
    p.add_argument("--tokenizer-vocab", type=int, default=None,
                   help="BPE vocabulary, at least 259 (256 bytes + 3 special tokens) and at most the model's "
                        "(default: 16000, or the model's if smaller)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="of the saved weights")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    shape = SHAPES[args.shape]
    vocab = min(16000, shape["vocab_size"]) if args.tokenizer_vocab is None else args.tokenizer_vocab
    if os.path.exists(os.path.join(args.out, "config.json")):
        p.error(f"{args.out} already holds a model (config.json): name a new folder")
    if not 3 + 256 <= vocab <= shape["vocab_size"]:
        p.error(f"--tokenizer-vocab {vocab}: must lie in 259..{shape['vocab_size']} (256 bytes and 3 special tokens "
                "at least; the model's rows at most)")
    if not os.path.isfile(args.text):
        p.error(f"--text {args.text}: no such file")
    os.makedirs(args.out, exist_ok=True)
    n_tok = write_tokenizer(args.out, args.text, vocab)
    torch.manual_seed(args.seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # a 1.5B init is quick on a GPU
        model = Transformer(ModelConfig(**shape))
    model.to(getattr(torch, args.dtype)).save_pretrained(args.out)
    print(f"{args.out}: {model.num_params() / 1e6:.1f} M random parameters ({args.dtype}), a {n_tok}-token tokenizer")


if __name__ == "__main__":
    main()
