"""dist.py's helpers in one process: float64 sums, FSDP2's gradient-sync switch, the config mismatch message,
and fully_shard on every block (a 1-rank gloo group)."""
import json
from types import SimpleNamespace

import pytest
import torch

import dist
from model import ModelConfig, Transformer


def test_sum_floats_keeps_float64(monkeypatch):
    monkeypatch.setattr(dist, "world", lambda: 2)
    monkeypatch.setattr(dist, "all_sum", lambda t: t + t)  # two ranks holding the same numbers
    assert dist.sum_floats([2.0 ** 24 + 1, 0.1]) == [2.0 ** 25 + 2, 0.2]  # float32 would give 33554432.0


def test_fsdp_no_sync_is_undone_after_the_micro_batch(monkeypatch):
    calls = []
    m = SimpleNamespace(set_requires_gradient_sync=calls.append)  # an FSDP2 module: no no_sync of its own
    monkeypatch.setattr(dist, "world", lambda: 2)
    with dist.grad_sync(m, sync=False):
        assert calls == [False]
    assert calls == [False, True]
    with dist.grad_sync(m, sync=True):  # the last micro-batch: reduced, nothing toggled
        pass
    assert calls == [False, True]


def test_more_than_five_differing_keys_are_counted(monkeypatch):
    a = {f"k{i}": 0 for i in range(7)}
    b = {f"k{i}": 1 for i in range(7)}
    monkeypatch.setattr(dist, "gather_objects", lambda text: [json.dumps(a), json.dumps(b)])
    with pytest.raises(ValueError, match=r"k4 \(0 vs 1\) and 2 more$"):
        dist.check_same_config(a)



def test_fsdp2_shards_each_block_on_its_own(tmp_path):
    from torch.distributed.fsdp import FSDPModule
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = Transformer(ModelConfig(vocab_size=32, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=24))
        dist.shard(model, torch.device("cpu"))
        assert [isinstance(b, FSDPModule) for b in model.layers] == [True, True] and isinstance(model, FSDPModule)
    finally:
        torch.distributed.destroy_process_group()


def test_setup_joins_with_this_ranks_gpu_nccl_and_a_long_timeout(monkeypatch):
    """Under torchrun on GPUs: LOCAL_RANK picks the GPU (not GPU 0 for every rank), nccl, a 2-hour timeout (the other
    ranks wait while rank 0 evaluates); on CPU, gloo."""
    import datetime
    joined, picked = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", picked.append)
    monkeypatch.setattr(dist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist.dist, "init_process_group", lambda backend, **kw: joined.append((backend, kw)))
    assert dist.setup(torch.device("cuda")) == torch.device("cuda", 1) and picked == [torch.device("cuda", 1)]
    assert joined == [("nccl", {"timeout": datetime.timedelta(hours=2)})]
    assert dist.setup(torch.device("cpu")) == torch.device("cpu")
    assert joined[-1] == ("gloo", {"timeout": datetime.timedelta(hours=2)})


def test_wrap_compiles_the_ddp_wrapper(monkeypatch):
    """Several ranks: DDP around the model (gradients as bucket views, device_ids only on a GPU), and torch.compile
    around DDP, never around the bare model (its gradients would not be reduced); FSDP2 is its own wrapper."""
    class FakeDDP:
        def __init__(self, module, **kw):
            self.module, self.kw = module, kw

    monkeypatch.setattr(dist, "world", lambda: 2)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    monkeypatch.setattr(dist.torch, "compile", lambda m: ("compiled", m))
    model = torch.nn.Linear(2, 2)
    fwd = dist.wrap(model, torch.device("cpu"))
    assert isinstance(fwd, FakeDDP) and fwd.module is model
    assert fwd.kw == {"device_ids": None, "gradient_as_bucket_view": True}
    assert dist.wrap(model, torch.device("cuda", 1)).kw["device_ids"] == [1]
    tag, inner = dist.wrap(model, torch.device("cpu"), compile=True)
    assert tag == "compiled" and isinstance(inner, FakeDDP) and inner.module is model
    assert dist.wrap(model, torch.device("cpu"), fsdp=True) is model


def test_all_sum_returns_a_new_tensor(monkeypatch):
    """The caller's tensor keeps its own (this rank's) values; the sum is a new tensor."""
    monkeypatch.setattr(dist, "world", lambda: 2)
    monkeypatch.setattr(dist.dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist.dist, "all_reduce", lambda buf, op: buf.mul_(2))  # two ranks holding the same numbers
    t = torch.tensor([1.0, 2.0])
    assert dist.all_sum(t).tolist() == [2.0, 4.0] and t.tolist() == [1.0, 2.0]


def test_check_same_config_names_the_rank_that_differs(monkeypatch):
    a, b = {"train": {"lr": 0.1}}, {"train": {"lr": 0.2}}
    monkeypatch.setattr(dist, "gather_objects", lambda text: [json.dumps(c) for c in (a, a, b, a)])
    with pytest.raises(ValueError, match=r"rank 2 differs from rank 0 in train.lr \(0.1 vs 0.2\)$"):
        dist.check_same_config(a)
