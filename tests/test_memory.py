"""memory.py against parameter-count arithmetic by hand, the refusal, and (on a GPU) torch.cuda.max_memory_allocated."""
import pytest
import torch

import memory
from model import ModelConfig, Transformer

CFG = ModelConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=160, max_seq_len=128)


def hand_count(c):
    """Parameters of our Llama block by hand: embedding (tied), per layer q/k/v/o, gate/up/down, two norms; final norm."""
    hd = c.dim // c.n_heads
    attn = c.dim * (c.n_heads * hd) + 2 * c.dim * (c.n_kv_heads * hd) + (c.n_heads * hd) * c.dim
    mlp = 3 * c.dim * c.hidden_dim
    return c.vocab_size * c.dim + c.n_layers * (attn + mlp + 2 * c.dim) + c.dim


def test_static_parts_match_parameter_arithmetic():
    N = hand_count(CFG)
    assert N == 256 * 64 + 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 160 + 128) + 64 == 102720
    model = Transformer(CFG)
    assert model.num_params() == N
    est = memory.estimate(CFG, N, micro_tokens=0)
    assert est["weights"] == sum(p.numel() * p.element_size() for p in model.parameters()) == 4 * N
    assert est["gradients"] == 4 * N and est["optimizer"] == 8 * N
    assert est["frozen"] == est["kv_cache"] == est["activations"] == est["logits"] == 0
    # AdamW's state really is two fp32 tensors per parameter
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    assert sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim()) == 8 * N
    sharded = memory.estimate(CFG, N, 0, world=4, fsdp=True)
    assert sharded["weights"] == N and sharded["optimizer"] == 2 * N  # FSDP2 splits over 4 ranks
    assert memory.estimate(CFG, N, 0, world=4)["weights"] == 4 * N  # DDP does not


def test_reference_kv_cache_and_activations():
    N = hand_count(CFG)
    est = memory.estimate(CFG, N, micro_tokens=1000, amp=True, frozen_params=N, kv_rows=24, kv_len=100)
    assert est["frozen"] == 2 * N  # a bf16 reference model
    assert est["kv_cache"] == 2 * CFG.n_layers * 24 * CFG.n_kv_heads * 100 * 16 * 2  # K and V, 2 bytes each
    # the cache really allocated by generate (fp32 here, so 4 bytes), from the shapes generate builds
    assert memory.estimate(CFG, N, 0, kv_rows=24, kv_len=100)["kv_cache"] == \
        CFG.n_layers * 2 * torch.empty(24, CFG.n_kv_heads, 100, CFG.head_dim).nbytes
    assert est["activations"] == 1000 * CFG.n_layers * (34 * 64 + 8 * 160)
    assert est["logits"] == 1000 * 256 * 10
    ckpt = memory.estimate(CFG, N, 1000, amp=True, checkpointing=True)
    assert ckpt["activations"] == 1000 * (CFG.n_layers * 4 * 64 + 34 * 64 + 8 * 160) < est["activations"]
    assert memory.peak(est) == 4 * N + 4 * N + 8 * N + 2 * N + est["activations"] + est["logits"]


def test_refuses_with_numbers():
    est = memory.estimate(CFG, hand_count(CFG), micro_tokens=1000)
    assert "peak ~" in memory.check(est, 2**40)
    with pytest.raises(MemoryError, match=r"weights 0\.4 MiB.*peak ~\d+\.\d MiB of 1\.0 MiB: does not fit"):
        memory.check(est, 2**20)


def test_cpu_capacity_is_the_machines_ram():
    assert memory.capacity(torch.device("cpu")) > 2**28


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_estimate_bounds_measured_peak_on_gpu():
    cfg = ModelConfig(vocab_size=32000, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, hidden_dim=1376, max_seq_len=512)
    dev = torch.device("cuda")
    model = Transformer(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters())
    B, T = 8, 512
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        x = torch.randint(0, cfg.vocab_size, (B, T), device=dev)
        with torch.autocast("cuda", torch.bfloat16):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    measured = torch.cuda.max_memory_allocated()
    est = memory.peak(memory.estimate(cfg, model.num_params(), B * T, amp=True))
    assert 0.5 * est < measured < 1.5 * est  # the activation count is rough, (measured, est)


def test_train_refuses_a_plan_that_cannot_fit(tmp_path):
    import train as T
    from test_train import TINY
    (tmp_path / "t.toml").write_text(TINY)
    args = ["--config", str(tmp_path / "t.toml"), "--stage", "sft", "--out_dir", str(tmp_path / "o"),
            "--train.batch_size=10000000", "--train.max_steps=1", "--train.eval_n=0"]
    with pytest.raises(MemoryError, match="logits .* GiB.*does not fit"):  # ~10^7 x 64 tokens of 384 logits
        T.main(args)


def test_frozen_model_bytes_follow_its_dtype():
    N = hand_count(CFG)
    assert memory.estimate(CFG, N, 0, amp=True, frozen_params=N, frozen_bytes=4)["frozen"] == 4 * N  # fp32 teacher
