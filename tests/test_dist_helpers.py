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
