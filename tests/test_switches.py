"""TrainConfig switches for bigger runs: activation checkpointing, torch.compile, bf16 autocast (CUDA only)."""
import os
import warnings
from contextlib import nullcontext

import torch
from safetensors.torch import load_file

import train as T
from model import ModelConfig, Transformer
from test_train import TINY


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.roll(-1, 1).flatten()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_recomputes_blocks_with_the_same_gradients(monkeypatch):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, hidden_dim=64))
    x = torch.randint(0, 64, (2, 10))
    plain = _grads(model, x)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    model.checkpointing = True
    ckpt = _grads(model, x)
    assert len(calls) == 3  # one per block
    assert all(torch.allclose(plain[n], ckpt[n], atol=1e-7, rtol=1e-6) for n in plain)
    with torch.no_grad():  # nothing to recompute without autograd, and generate never checkpoints
        model(x)
    model.generate([[1, 2]], 3)
    assert len(calls) == 3


def test_compile_switch_trains_the_same_weights(tmp_path, monkeypatch):
    (tmp_path / "t.toml").write_text(TINY)
    args = ["--config", str(tmp_path / "t.toml"), "--stage", "sft", "--train.max_steps=2", "--train.eval_n=0"]
    T.main(args + ["--out_dir", str(tmp_path / "eager")])
    compiled = []
    real = torch.compile
    # the "eager" backend: dynamo traces the model (what the switch changes in our code) without a C++ toolchain
    monkeypatch.setattr(torch, "compile", lambda m, **k: (compiled.append(m), real(m, backend="eager"))[1])
    T.main(args + ["--out_dir", str(tmp_path / "comp"), "--train.compile=true", "--train.activation_checkpointing=true"])
    assert len(compiled) == 1
    a = load_file(os.path.join(tmp_path, "eager", "final", "model.safetensors"))
    b = load_file(os.path.join(tmp_path, "comp", "final", "model.safetensors"))
    assert a.keys() == b.keys()  # no _orig_mod. prefixes: the plain model is saved
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bf16_autocast_only_on_cuda_and_only_when_asked():
    assert isinstance(T.autocast(torch.device("cpu")), nullcontext)
    assert isinstance(T.autocast(torch.device("cuda"), enabled=False), nullcontext)
    with warnings.catch_warnings():  # without a GPU torch warns that it disables the context; its settings stand
        warnings.simplefilter("ignore")
        on = T.autocast(torch.device("cuda"))
    assert isinstance(on, torch.autocast) and on.device == "cuda" and on.fast_dtype == torch.bfloat16
    assert T.TrainConfig().bf16 is True
