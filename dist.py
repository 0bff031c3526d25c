"""
Several processes for r1-mini under torchrun: the process group, sums over the ranks, DDP / FSDP2 wrapping, and
the full state dict of a sharded model for saving. train.py is the only file that imports this one.

    torchrun --nproc_per_node 8 train.py --config configs/NAME.toml      # one node, 8 GPUs
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:29500 train.py --config ...

Each process is one rank; RANK, WORLD_SIZE and LOCAL_RANK come from torchrun's environment. Without them (or with
WORLD_SIZE=1) no process group is started and every function here is the single-process identity, so a plain
`python train.py` runs exactly the code it ran before this file existed.

How a step's work splits over W ranks so that the update equals one process with the same config:
  pretrain/sft/distill  a step is grad_accum micro-batches of batch_size sequences, each a pure function of
                        (seed, step, micro); rank r takes micro-batches r, r + W, ... (grad_accum % W == 0). Each
                        micro-batch keeps its own masked token mean, so however many tokens each rank's masks hold,
                        the loss is normalised exactly as in one process. DDP (or FSDP2) averages gradients over
                        the W ranks, so each rank weights its micro-batch losses by W / grad_accum.
  grpo                  the step's prompts are cut into rollout chunks of grpo.rollout_prompts prompts (default
                        batch_size / W), chunk c sampled on rank c % W with its own generator, so whole groups stay
                        on one rank, and with rollout_prompts set the samples do not depend on W (the default
                        chunk size does, and so do its samples). grpo.py takes `reduce` (all_sum) to count
                        every rank's sequences and tokens in its loss denominators and to sum the gradients.
Rank 0 alone writes checkpoints, metrics and samples, and evaluates; every rank resumes from the same checkpoint.
"""

import datetime
import json
import os
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist


def setup(device):
    """Join torchrun's process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU) and return this rank's device
    (cuda:LOCAL_RANK on GPUs). Idempotent: a group started by the caller (tests) is reused."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        local, n_gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if n_gpus == 0:
            raise ValueError("train.device is cuda, but this node has no GPU that torch can see: run the ranks on CPU "
                             "with --train.device=cpu")
        if local >= n_gpus:  # torch's own error would be "invalid device ordinal"
            raise ValueError(f"LOCAL_RANK {local} needs a GPU of its own, but this node has {n_gpus}: start at most "
                             f"{n_gpus} processes per node (torchrun --nproc_per_node {n_gpus}), or run the ranks on "
                             "CPU with --train.device=cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # a long timeout: the other ranks wait while rank 0 evaluates or saves
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))
    return device


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    return rank() == 0


def barrier():
    if world() > 1:
        dist.barrier()


@contextmanager
def rank0_first():
    """Rank 0 runs the block first (it may write a file: a trained tokenizer, teacher traces), the others after."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_sum(t):
    """The sum of tensor t over all ranks (t itself in one process). nccl needs the tensor on this rank's GPU."""
    if world() == 1:
        return t
    here = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    buf = t.to(here, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def sum_floats(values):
    """A list of Python floats summed elementwise over the ranks: one collective for a step's logging numbers."""
    if world() == 1:
        return list(values)
    return all_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def gather_objects(obj):
    """Every rank's obj (picklable), in rank order, on every rank: [obj] in one process."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def check_same_config(config):
    """Refuse ranks started with different settings (config: a dict of plain values, the run's config): their
    updates would differ and their weights drift apart without an error. Every rank raises, so none waits."""
    texts = gather_objects(json.dumps(config, sort_keys=True, default=str))
    if len(set(texts)) == 1:
        return

    def flat(d, prefix=""):
        return {k: v for key, val in d.items()
                for k, v in (flat(val, f"{prefix}{key}.").items() if isinstance(val, dict) else [(prefix + key, val)])}
    ranks = [flat(json.loads(t)) for t in texts]  # compared as values: 1 and 1.0, or {} and {"a": {}}, agree
    r = next((i for i, cfg in enumerate(ranks) if cfg != ranks[0]), None)
    if r is None:
        return
    keys = sorted(k for k in ranks[0].keys() | ranks[r].keys() if ranks[0].get(k) != ranks[r].get(k))
    raise ValueError(f"the ranks were started with different configs: rank {r} differs from rank 0 in "
                     + ", ".join(f"{k} ({ranks[0].get(k)!r} vs {ranks[r].get(k)!r})" for k in keys[:5])
                     + ("" if len(keys) <= 5 else f" and {len(keys) - 5} more"))


# -----------------------------------------------------------------------------
# Wrapping the model for training


def shard(model, device):
    """FSDP2 (torch.distributed.fsdp.fully_shard): each block's parameters, gradients and optimizer state are split
    over the ranks and gathered for its forward/backward; the root holds the embedding, final norm and output.
    Call before building the optimizer (it must see the sharded parameters). The module is changed in place.
    fully_shard also runs on CPU with gloo (torch 2.6+), which is how the tests check it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    model.to(device)
    mesh = init_device_mesh(device.type, (world(),))  # named: by default a CPU run on a GPU machine asks for cuda:rank
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the root: a tied output matrix stays one parameter with the embedding
    return model


def wrap(model, device, fsdp=False, compile=False):
    """What a training step calls: the model inside DDP when there are several ranks (a sharded FSDP2 model is
    already its own wrapper), compiled with torch.compile on request. Saving and sampling keep using `model`."""
    fwd = model
    if world() > 1 and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # gradients as views of DDP's all-reduce buckets: no second full copy of them (memory.py counts one)
        fwd = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    return torch.compile(fwd) if compile else fwd


def grad_sync(fwd, sync):
    """Context for one micro-batch's forward + backward: gradients are reduced over the ranks only when `sync`
    (the last micro-batch of the step); before that DDP / FSDP2 just accumulate them locally."""
    m = getattr(fwd, "_orig_mod", fwd)  # under torch.compile
    if sync or world() == 1:
        return nullcontext()
    if hasattr(m, "no_sync"):  # DDP
        return m.no_sync()
    return _fsdp_no_sync(m)


@contextmanager
def _fsdp_no_sync(m):
    m.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        m.set_requires_gradient_sync(True)


def is_sharded(model):
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def clip_grad_norm(params, max_norm):
    """Global gradient L2 norm before clipping, as a float (FSDP2 returns it as a DTensor)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


# -----------------------------------------------------------------------------
# State dicts: a sharded model saves and resumes through full (gathered) tensors


def full_state(model, opt):
    """(weights, optimizer state) to save. A plain or DDP model: (None, opt.state_dict()), the model saves its own
    state_dict. FSDP2: both gathered into full CPU tensors on rank 0 (a collective: every rank must call it)."""
    if not is_sharded(model):
        return None, opt.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, opt, options=opts)


def load_optimizer(model, opt, state):
    """Restore the optimizer state that full_state saved (every rank reads the same file)."""
    if not is_sharded(model):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    if any(isinstance(k, int) for k in state["state"]):  # saved by a plain or DDP run: keyed by position, not name
        names = {id(p): n for n, p in model.named_parameters()}
        fqns = [names[id(p)] for g in opt.param_groups for p in g["params"]]
        state = {"state": {fqns[i]: v for i, v in state["state"].items()},
                 "param_groups": [{**g, "params": [fqns[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
