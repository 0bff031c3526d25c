"""bench.py runs end to end on a tiny model (no timing assertions: speed targets live in the issues)."""
import re

import torch

import bench


def test_bench_prints_train_sample_and_grpo(capsys):
    n = torch.get_num_threads()
    try:
        bench.main(["--dim", "32", "--n_layers", "1", "--n_heads", "2", "--n_kv_heads", "1", "--hidden_dim", "48",
                    "--vocab_size", "64", "--threads", "1", "--seq", "16", "--steps", "1", "--gen-new", "4",
                    "--gen-reps", "1", "--grpo-reps", "1", "--warmup", "1"])
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert float(re.search(r"train  b8x16: (\d+) tok/s, MFU ([\d.]+)%", out).group(1)) > 0
    assert float(re.search(r"sample 16x4 .*: (\d+) new tok/s", out).group(1)) > 0
    sec, roll, upd = map(float, re.search(r"grpo .*: ([\d.]+) s/step \(last step: rollout ([\d.]+) s, update ([\d.]+) s",
                                          out).groups())
    assert sec > 0 and roll > 0 and upd > 0
