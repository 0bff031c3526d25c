"""memory.py against parameter-count arithmetic by hand, the refusal, and (on a GPU) torch.cuda.max_memory_allocated."""
import pytest
import torch

import memory
from model import ModelConfig, Transformer
from test_train import pretrained  # noqa: F401 (the module-scoped fixture: a tiny trained model)

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


def test_decode_weights_are_generates_bf16_copy():
    """Under bf16 autocast generate casts every matmul weight once and keeps the copies for the call: the plan's
    decode_weights is their size, counted by hand and recorded from the casts generate really makes."""
    from torch.utils._python_dispatch import TorchDispatchMode
    N = hand_count(CFG)
    est = memory.estimate(CFG, N, micro_tokens=10, amp=True, kv_rows=2, kv_len=8)
    per_layer = 64 * (4 + 2 + 2 + 4) * 16 + 3 * 64 * 160  # q/k/v/o and gate/up/down
    assert est["decode_weights"] == 2 * (2 * per_layer + 256 * 64) == 204800  # the (tied) head is cast too
    assert memory.peak(est) == 16 * N + est["kv_cache"] + est["decode_weights"]  # the rollout is the peak here
    assert memory.estimate(CFG, N, 10, kv_rows=2, kv_len=8)["decode_weights"] == 0  # fp32: no copy
    assert memory.estimate(CFG, N, 10, amp=True)["decode_weights"] == 0  # no generate call

    model = Transformer(CFG)
    params = {p.data_ptr(): p for p in model.parameters()}
    cast = {}

    class Casts(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype) and args[0].data_ptr() in params:
                cast[args[0].data_ptr()] = out.nbytes
            return out

    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16), Casts():
        model.generate([[1, 2, 3], [4, 5]], 5, temperature=1.0, seed=0)
    assert sum(cast.values()) == est["decode_weights"]


def test_refuses_with_numbers():
    est = memory.estimate(CFG, hand_count(CFG), micro_tokens=1000)
    assert "peak ~" in memory.check(est, 2**40)
    with pytest.raises(MemoryError, match=r"weights 0\.4 MiB.*peak ~\d+\.\d MiB of 1\.0 MiB: does not fit"):
        memory.check(est, 2**20)


def test_cpu_capacity_is_the_machines_ram(monkeypatch):
    total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert memory.capacity(torch.device("cpu")) == total
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: the ranks on this machine share it
    assert memory.capacity(torch.device("cpu")) == total // 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_estimate_bounds_measured_peak_on_gpu():
    cfg = ModelConfig(vocab_size=32000, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, hidden_dim=1376, max_seq_len=512)
    dev = torch.device("cuda")
    before = torch.cuda.memory_allocated()  # what earlier tests in this process still hold
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
    measured = torch.cuda.max_memory_allocated() - before
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


def test_largest_kv_cache_distill_logits_and_ranks_sharing_ram(monkeypatch):
    N = hand_count(CFG)
    big = ModelConfig(vocab_size=512, dim=128, n_layers=3, n_heads=4, n_kv_heads=4, hidden_dim=256, max_seq_len=128)
    est = memory.estimate(CFG, N, 100, kv_rows=2, kv_len=10, kv_caches=[(big, 8, 50), (CFG, 1, 1)])
    assert est["kv_cache"] == 2 * 3 * 8 * 4 * 50 * 32 * 4  # the teacher's sampling cache, the largest of three
    assert memory.estimate(CFG, N, 100, kv_rows=2, kv_len=10, kv_caches=[(CFG, 1, 1)])["kv_cache"] == \
        2 * 2 * 2 * 2 * 10 * 16 * 4
    est = memory.estimate(CFG, N, 100, loss_logits=7, loss_vocab=512)  # logit matching against a 512-row teacher
    assert est["logits"] == 100 * (256 * 12 + 512 * 4 * 7)
    ram = memory.capacity(torch.device("cpu"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on one machine: half the RAM each
    assert memory.capacity(torch.device("cpu")) == ram // 2


def test_stages_plan_their_real_shapes(pretrained, tmp_path, monkeypatch):  # noqa: F811
    """Each stage hands memory.estimate the shapes it will run: grpo's micro-batch holds at most a rank's samples,
    sft rows are as long as the longest pair (not data.seq_len), the in-training evaluation's greedy batch and a
    distillation teacher's sampling batch are caches, and logit matching adds its loss's tensors."""
    import train as T
    toml, init = pretrained
    plans = []

    class Planned(Exception):
        pass

    def estimate(mcfg, n_params, micro_tokens, **kw):
        plans.append((mcfg, micro_tokens, kw))
        raise Planned

    monkeypatch.setattr(memory, "estimate", estimate)
    run = lambda *args: pytest.raises(Planned, T.main, ["--config", toml, "--out_dir", str(tmp_path / str(len(plans))),
                                                        *args])  # noqa: E731
    run("--stage", "grpo", "--init", init, "--train.batch_size=2", "--grpo.group_size=4", "--grpo.max_new_tokens=8",
        "--grpo.micro_batch_size=1024", "--train.eval_n=3", "--train.eval_batch_size=2", "--train.max_new_tokens=9")
    mcfg, tokens, kw = plans[-1]
    tok = T.D.load_tokenizer(init)
    cfg = T.load_config(toml, [])
    problems = T.D.synthetic_problems(cfg.data.n_train, cfg.data.families, cfg.data.levels, seed=cfg.data.seed)
    S = max(len(p) for p in T.E.encode_prompts(tok, problems, cfg.data.template)) + 8
    assert tokens == 2 * 4 * S and (kw["kv_rows"], kw["kv_len"]) == (2 * 4, S)  # 8 rows, not 1024
    (c, rows, length), = kw["kv_caches"]  # the evaluation: 2 prompts per call, the longest of 3 plus 9 tokens
    test = T.D.synthetic_problems(cfg.data.n_test, cfg.data.families, cfg.data.levels, seed=cfg.data.seed + 1)
    assert c is mcfg and rows == 2 and length == max(len(p) for p in T.E.encode_prompts(tok, test[:3], "plain")) + 9

    run("--stage", "sft", "--init", init, "--train.eval_n=0", "--data.seq_len=200")
    _, tokens, kw = plans[-1]
    longest = max(sum(map(len, T.D.encode_sft(tok, p, cfg.data.template, 200))) for p in problems) - 1  # x's length
    assert tokens == cfg.train.batch_size * longest and longest < 200 and kw["kv_caches"] == []

    for mode, source in (("traces", "teacher"), ("logits", "teacher"), ("logits", "dataset")):
        run("--stage", "distill", "--distill.teacher", init, f"--distill.mode={mode}", f"--distill.source={source}",
            "--distill.max_new_tokens=8", "--train.eval_n=0", "--train.eval_batch_size=5", "--data.seq_len=200")
        _, tokens, kw = plans[-1]
        if source == "teacher":
            (c, rows, length), = kw["kv_caches"]
            assert (c.dim, rows, length) == (32, 5 if mode == "traces" else cfg.train.batch_size, S)
            assert tokens == cfg.train.batch_size * S
        else:
            assert kw["kv_caches"] == [] and tokens == cfg.train.batch_size * longest
        assert kw["loss_logits"] == (0 if mode == "traces" else 7) and kw["frozen_params"] > 0


def test_memory_check_keeps_5_percent_headroom():
    est = dict(weights=96, gradients=0, optimizer=0, frozen=0, kv_cache=0, decode_weights=0, activations=0, logits=0)
    assert "peak ~" in memory.check(est, 102)  # 96 <= 0.95 * 102 = 96.9
    with pytest.raises(MemoryError):
        memory.check(est, 100)  # 96 > 0.95 * 100, though it is below the device's 100


def test_fp32_activations_take_twice_bf16s_bytes():
    est = memory.estimate(CFG, 1, micro_tokens=10)  # no autocast: every saved activation is fp32
    assert est["activations"] == 10 * 2 * (34 * 64 + 8 * 160) * 2 == 138240  # tokens x layers x (34 D + 8 F) x 2 (fp32)
    ckpt = memory.estimate(CFG, 1, micro_tokens=10, checkpointing=True)
    assert ckpt["activations"] == 10 * (2 * 4 * 64 + (34 * 64 + 8 * 160) * 2) == 74240


def test_fsdp_shards_the_gradients_too():
    est = memory.estimate(CFG, 1000, 0, world=4, fsdp=True)
    assert (est["weights"], est["gradients"], est["optimizer"]) == (1000, 1000, 2000)


def test_the_largest_cache_counts_wherever_it_is_listed():
    big = ModelConfig(vocab_size=512, dim=128, n_layers=3, n_heads=4, n_kv_heads=4, hidden_dim=256, max_seq_len=128)
    est = memory.estimate(CFG, 1, 0, kv_caches=[(CFG, 1, 1), (big, 8, 50)])
    assert est["kv_cache"] == 2 * 3 * 8 * 4 * 50 * 32 * 4 == 1228800


def test_the_decode_copy_is_the_sampling_models_and_picks_the_call():
    # bf16: the policy's own rollout (big cache, small model) against a teacher's (small cache, big model)
    teacher = ModelConfig(vocab_size=4096, dim=256, n_layers=4, n_heads=4, n_kv_heads=4, hidden_dim=512,
                          max_seq_len=128)
    own_kv = 2 * 2 * 64 * 2 * 32 * 16 * 2                       # 524288: 64 rows x 32 positions, 2 kv heads
    teacher_kv = 2 * 4 * 1 * 4 * 8 * 64 * 2                     # 32768: 1 row x 8 positions
    own_copy = 2 * CFG.matmul_params                              # 2 * 102400 = 204800
    teacher_copy = 2 * (4 * (256 * 16 * 64 + 3 * 256 * 512) + 4096 * 256)  # 2 * 3670016 = 7340032
    assert (CFG.matmul_params, teacher.matmul_params) == (102400, 3670016)
    est = memory.estimate(CFG, 1, 0, amp=True, kv_rows=64, kv_len=32, kv_caches=[(teacher, 1, 8)])
    assert own_kv + own_copy < teacher_kv + teacher_copy
    assert (est["kv_cache"], est["decode_weights"]) == (teacher_kv, teacher_copy)


def test_plan_line_reports_binary_units_and_the_peak():
    """The printed plan: MiB and GiB are powers of 2, and 'peak ~' is the peak, not the device."""
    est = dict(weights=3 * 2**20, gradients=2**31, optimizer=0, frozen=0, kv_cache=0, decode_weights=0, activations=0,
               logits=0)
    line = memory.check(est, 2**34)
    assert "weights 3.0 MiB, gradients 2.00 GiB," in line
    assert line.endswith("peak ~2.00 GiB of 16.00 GiB")  # 2 GiB + 3 MiB
