"""train.py: config loading, lr schedule, end-to-end pretrain -> SFT, the grpo stage (run folders and resume:
test_resume.py)."""
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

import train as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = """
stage = "pretrain"
[model]
dim = 32
n_layers = 2
n_heads = 4
n_kv_heads = 2
hidden_dim = 64
max_seq_len = 256
[data]
families = "add,linear"
levels = "1"
n_train = 300
n_test = 20
vocab_size = 384
seq_len = 64
[train]
max_steps = 6
batch_size = 4
lr = 3e-3
warmup_steps = 2
log_every = 1
eval_every = 3
eval_n = 4
eval_batch_size = 4
max_new_tokens = 12
save_every = 2
"""


@pytest.fixture()
def tiny_toml(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return str(path)


def test_config_file_then_cli_overrides(tiny_toml):
    cfg = T.load_config(tiny_toml, ["--train.lr=5e-4", "--train.resume", "true", "--data.template=r1",
                                    "--out_dir", "x"])
    assert cfg.train.lr == 5e-4 and cfg.train.resume is True and cfg.data.template == "r1" and cfg.out_dir == "x"
    assert cfg.model.dim == 32 and cfg.train.max_steps == 6 and cfg.stage == "pretrain"
    assert T.load_config(None, ["--train.max_steps=7"]).train.max_steps == 7  # defaults without a file


def test_config_errors_name_the_key(tiny_toml, tmp_path):
    with pytest.raises(KeyError, match=r"unknown key \[train\]\.lrr; valid: .*'lr'"):
        T.load_config(tiny_toml, ["--train.lrr=1"])
    with pytest.raises(KeyError, match=r"unknown key nosection"):
        T.load_config(tiny_toml, ["--nosection.x=1"])
    with pytest.raises(TypeError, match=r"\[train\]\.max_steps: cannot read 'ten' as int"):
        T.load_config(tiny_toml, ["--train.max_steps=ten"])
    with pytest.raises(TypeError, match=r"\[train\]\.resume: cannot read 'maybe' as bool"):
        T.load_config(tiny_toml, ["--train.resume=maybe"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nmax_steps = "many"\n')
    with pytest.raises(TypeError, match=r"\[train\]\.max_steps: expected int, got str"):
        T.load_config(str(bad))
    bad.write_text('[train]\nmax_steps = 1.5\n')
    with pytest.raises(TypeError, match=r"\[train\]\.max_steps: expected int, got float"):
        T.load_config(str(bad))
    bad.write_text('[trian]\nmax_steps = 1\n')
    with pytest.raises(KeyError, match=r"unknown key trian"):
        T.load_config(str(bad))


def test_format_reward_needs_the_r1_template():
    # the format reward pays <think>..</think><answer>..</answer>: no other template asks for it (deepseek-r1's
    # prompt even opens <think> itself, so a completion that follows it would score 0 and a nested one 1)
    for template in ("plain", "qwen", "deepseek-r1", "chat"):
        cfg = T.load_config(None, ["--stage=grpo", "--init=x", "--reward.format_weight=0.5",
                                   f"--data.template={template}"])
        with pytest.raises(ValueError, match=rf"\[reward\]\.format_weight = 0\.5 with \[data\]\.template = "
                                             rf"'{template}'"):
            T.check_config(cfg)
    T.check_config(T.load_config(None, ["--stage=grpo", "--init=x", "--reward.format_weight=0.5",
                                        "--data.template=r1"]))
    T.check_config(T.load_config(None, ["--stage=sft", "--reward.format_weight=0.5"]))  # only grpo reads it


def test_settings_a_run_never_reads_are_said_or_refused(capsys):
    traces = ["--stage=distill", "--distill.teacher=x", "--distill.mode=traces"]
    T.check_config(T.load_config(None, traces + ["--distill.top_k=5", "--distill.kind=jsd", "--distill.ce_weight=1"]))
    assert capsys.readouterr().out == ('note: not used by this run: [distill].kind (mode = "logits" only), '
                                       '[distill].top_k (mode = "logits" only), [distill].ce_weight (mode = "logits" '
                                       'only)\n')
    T.check_config(T.load_config(None, traces + ["--distill.samples_per_prompt=2"]))  # nothing to say
    T.check_config(T.load_config(None, ["--stage=distill", "--distill.teacher=x", "--distill.top_k=5"]))  # logits
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match=r"samples_per_prompt = 4 with sample_temperature = 0: greedy sampling gives "
                                         "the same trace each time"):  # 4x the teacher's compute for one trace
        T.check_config(T.load_config(None, traces + ["--distill.sample_temperature=0"]))  # with the default 4
    T.check_config(T.load_config(None, traces + ["--distill.samples_per_prompt=1", "--distill.sample_temperature=0"]))
    T.check_config(T.load_config(None, ["--stage=grpo", "--init=x", "--grpo.beta=0", "--grpo.ref_update_every=2"]))
    assert "[grpo].ref_update_every (beta = 0: there is no reference model)" in capsys.readouterr().out


@pytest.mark.parametrize("arg,match", [
    ("--model.n_heads=3", r"\[model\]: dim 32 is not divisible by n_heads 3"),  # set after the dataclass was built
    ("--model.n_kv_heads=0", r"\[model\]: n_kv_heads must be a positive integer"),
    ("--train.grad_accum=0", r"\[train\]\.grad_accum = 0: must be at least 1"),  # trained nothing, then "finished"
    ("--train.max_new_tokens=0", r"\[train\]\.max_new_tokens"),  # failed at the first evaluation, unsaved
    ("--train.eval_batch_size=0", r"\[train\]\.eval_batch_size"),
    ("--train.save_every=0", r"\[train\]\.save_every"), ("--train.log_every=0", r"\[train\]\.log_every"),
    ("--data.levels=0,7", r"\[data\]\.levels = '0,7'"), ("--data.flaw_p=2", r"\[data\]\.flaw_p = 2\.0"),
    ("--distill.temperature=0", r"\[distill\]\.temperature"), ("--distill.top_k=-3", r"\[distill\]\.top_k"),
    ("--distill.samples_per_prompt=0", r"\[distill\]\.samples_per_prompt"),
    ("--grpo.group_size=1", r"\[grpo\]\.group_size"),
    ("--train.seed=-1", r"\[train\]\.seed = -1: must be in \[0, 2\*\*32\)"),  # numpy refused it after setup
    ("--train.lr=inf", r"\[train\]\.lr = inf"), ("--model.rope_theta=-1", r"\[model\]: rope_theta must be"),
    ("--model.norm_eps=0", r"\[model\]: norm_eps must be"), ("--out_dir=", "out_dir is empty"),
    ("--grpo.temperature=inf", r"\[grpo\]\.temperature = inf"),
    ("--distill.temperature=inf", r"\[distill\]\.temperature"),
    ("--distill.sample_temperature=inf", r"\[distill\]\.sample_temperature")])
def test_bad_settings_are_errors_before_anything_runs(tiny_toml, tmp_path, arg, match):
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=match):
        T.main(["--config", tiny_toml, "--out_dir", str(out), arg])
    assert not out.exists()
    (tmp_path / "p.toml").write_text(PIPE)  # a pipeline checks every step before the first one trains
    with pytest.raises(ValueError, match=match):
        T.main(["--config", str(tmp_path / "p.toml"), "--out_dir", str(out), arg])
    assert not out.exists()


def test_command_line_forms(tmp_path, capsys):
    assert T.main(["--help"]) is None and "python train.py --config" in capsys.readouterr().out
    (tmp_path / "p.toml").write_text(PIPE)
    with pytest.raises(ValueError, match=r"\[pipeline\.pretrain\]"):  # --config=FILE reads the file
        T.main([f"--config={tmp_path / 'p.toml'}", "--train.grad_accum=0"])
    with pytest.raises(ValueError, match="--config needs a TOML file"):
        T.main(["--train.lr=1e-3", "--config"])


def test_lr_schedule_warmup_then_cosine():
    tc = T.TrainConfig(lr=1.0, warmup_steps=4, max_steps=14, min_lr_frac=0.1)
    assert [T.lr_at(s, tc) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert T.lr_at(4, tc) == pytest.approx(1.0)
    assert T.lr_at(9, tc) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert T.lr_at(14, tc) == pytest.approx(0.1) and T.lr_at(100, tc) == pytest.approx(0.1)


def test_lm_loss_masks_and_averages():
    logits = torch.zeros(1, 3, 4)  # uniform: CE = log 4 everywhere
    logits[0, 1, 2] = 10.0         # confident and right at position 1
    y = torch.tensor([[0, 2, 1]])
    full = T.lm_loss(logits, y)
    assert full.item() == pytest.approx((2 * math.log(4) + -torch.log_softmax(logits[0, 1], -1)[2].item()) / 3)
    assert T.lm_loss(logits, y, torch.tensor([[1.0, 0.0, 1.0]])).item() == pytest.approx(math.log(4))


def _read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(r) for r in f]


def test_pretrain_then_sft_end_to_end(tiny_toml, tmp_path):
    out = str(tmp_path / "pre")
    T.main(["--config", tiny_toml, "--out_dir", out])
    final = os.path.join(out, "final")
    for name in ("model.safetensors", "config.json", "tokenizer.model", "run_config.json", "train_state.pt"):
        assert os.path.exists(os.path.join(final, name)), name
    hf = json.load(open(os.path.join(final, "config.json")))
    assert hf["model_type"] == "llama" and hf["hidden_size"] == 32 and hf["vocab_size"] == 384
    rows = _read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(math.isfinite(r["loss"]) for r in rows)
    assert "eval/accuracy" in rows[2] and "eval/accuracy" in rows[5]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert os.path.getsize(os.path.join(out, "samples.jsonl")) > 0
    assert len(T.list_checkpoints(out)) == 2  # ckpt 2 and 4 (keep_last=2); step 6 is `final`

    sft = str(tmp_path / "sft")
    T.main(["--config", tiny_toml, "--stage", "sft", "--init", final, "--out_dir", sft, "--train.max_steps=3"])
    rows = _read_metrics(sft)
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    run = json.load(open(os.path.join(sft, "final", "run_config.json")))
    assert run["stage"] == "sft" and run["init"] == final and run["model"]["dim"] == 32
    sample = json.loads(open(os.path.join(sft, "samples.jsonl")).readline())
    assert {"question", "gold", "completion", "pred", "reward"} <= set(sample)


def test_context_overflow_is_an_error_at_the_start(tiny_toml, pretrained, tmp_path, capsys):
    # the first held-out evaluation would come at step 3; the error must come before any training step
    with pytest.raises(ValueError, match=r"held-out .* exceeds model.max_seq_len=256"):
        T.main(["--config", tiny_toml, "--out_dir", str(tmp_path / "p"), "--train.max_new_tokens=1000"])
    assert not os.path.exists(tmp_path / "p" / "metrics.jsonl") or not _read_metrics(str(tmp_path / "p"))
    toml, init = pretrained
    with pytest.raises(ValueError, match=r"training .* exceeds model.max_seq_len"):
        T.main(["--config", toml, "--init", init, "--out_dir", str(tmp_path / "g"), *GRPO_ARGS,
                "--grpo.max_new_tokens=1000", "--train.grad_accum=2"])
    assert "note: not used by this run: [train].grad_accum (grpo: " in capsys.readouterr().out  # said, not ignored
    with pytest.raises(ValueError, match=r"held-out .* exceeds model.max_seq_len"):  # grpo's evaluation too
        T.main(["--config", toml, "--init", init, "--out_dir", str(tmp_path / "h"), *GRPO_ARGS,
                "--train.max_new_tokens=1000"])
    assert not os.path.exists(tmp_path / "h" / "metrics.jsonl")


def test_sft_refuses_prompts_that_fill_seq_len(tiny_toml, tmp_path):
    # a prompt longer than seq_len leaves an empty completion: the run would train on no token at all
    with pytest.raises(ValueError, match=r"longer than data.seq_len=4"):
        T.main(["--config", tiny_toml, "--stage", "sft", "--out_dir", str(tmp_path / "s"), "--data.seq_len=4",
                "--train.max_steps=1", "--train.eval_n=0"])


def test_fsdp_without_torchrun_is_a_clear_error(tiny_toml, tmp_path):
    with pytest.raises(ValueError, match="launch with torchrun"):
        T.main(["--config", tiny_toml, "--out_dir", str(tmp_path / "f"), "--train.fsdp=true", "--train.max_steps=1"])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    d = tmp_path_factory.mktemp("pre")
    (d / "tiny.toml").write_text(TINY)
    T.main(["--config", str(d / "tiny.toml"), "--out_dir", str(d / "out"), "--train.eval_n=0"])
    return str(d / "tiny.toml"), str(d / "out" / "final")


def test_fsdp_runs_no_evaluation_so_its_budget_is_not_checked(pretrained, monkeypatch):
    """Under train.fsdp there is no in-training evaluation: its new-token budget cannot refuse the run, and its KV
    cache is not in the memory plan."""
    import types
    toml, final = pretrained
    run = types.SimpleNamespace(device=torch.device("cpu"), tok=T.D.load_tokenizer(final),
                                model=T.Transformer.from_pretrained(final), test=None)
    real, planned = T.memory.estimate, []
    monkeypatch.setattr(T.memory, "estimate", lambda *a, **k: planned.append(k["kv_caches"]) or real(*a, **k))
    for fsdp, budget in (("false", 12), ("true", 12), ("true", 250)):
        cfg = T.load_config(toml, [f"--train.fsdp={fsdp}", f"--train.max_new_tokens={budget}"])
        run.test = T.D.load_problems(cfg.data, "test")
        T.report_memory(cfg, run, micro_tokens=64)
    assert len(planned[0]) == 1 and planned[1] == planned[2] == []  # the evaluation's cache only without FSDP
    cfg = T.load_config(toml, ["--train.max_new_tokens=250"])  # with an evaluation, 250 + a prompt > 256
    with pytest.raises(ValueError, match="held-out"):
        T.report_memory(cfg, run, micro_tokens=64)


def cut_and_resume_grpo(monkeypatch, argv, at):
    """Run a grpo stage killed (KeyboardInterrupt) as its step `at` starts, then resume it to the end."""
    real, calls = T.grpo.grpo_step, {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(T.grpo, "grpo_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        T.main(argv)
    monkeypatch.setattr(T.grpo, "grpo_step", real)
    T.main(argv + ["--train.resume=true"])


GRPO_ARGS = ["--stage", "grpo", "--train.max_steps=4", "--train.batch_size=2", "--train.lr=1e-3",
             "--train.save_every=2", "--train.eval_every=2", "--train.eval_n=2", "--grpo.group_size=4",
             "--grpo.max_new_tokens=8", "--grpo.ref_update_every=3", "--reward.format_weight=0.5",
             "--data.template=r1"]


def test_grpo_stage_logs_and_resumes_exactly(pretrained, tmp_path, monkeypatch):
    toml, init = pretrained
    # the tiny model never answers right: a reward that varies (odd tokens, shaped) makes the logged means move
    monkeypatch.setattr(T, "make_reward_fn", lambda *a: lambda p, c: (sum(t % 2 for t in c) / max(1, len(c)), 0.0))
    ref = str(tmp_path / "ref")
    T.main(["--config", toml, "--init", init, "--out_dir", ref, *GRPO_ARGS])
    rows = _read_metrics(ref)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4] and "eval/accuracy" in rows[0]
    for key in ("reward_mean", "reward_std", "accuracy_mean", "format_rate", "kl", "clip_frac", "entropy",
                "completion_len", "len_correct", "zero_std_frac", "truncated_frac", "grad_norm", "rollout_s"):
        assert key in rows[1], key
    assert rows[1]["completion_len"] <= 8 and rows[1]["truncated_frac"] > 0  # an 8-token budget truncates
    assert os.path.exists(os.path.join(ref, "final", "model.safetensors"))

    # interrupt at the 4th step (after the step-2 checkpoint), resume, and land on the same weights
    out = str(tmp_path / "cut")
    cut_and_resume_grpo(monkeypatch, ["--config", toml, "--init", init, "--out_dir", out, *GRPO_ARGS], at=4)
    a = load_file(os.path.join(ref, "final", "model.safetensors"))
    b = load_file(os.path.join(out, "final", "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    cut = _read_metrics(out)
    assert [r["step"] for r in cut] == [0, 1, 2, 3, 4]
    for r, c in zip(rows, cut):  # the logged metrics resume too (the reward's moving average included)
        for k in r:
            if not k.endswith("_s"):  # wall times
                assert c[k] == pytest.approx(r[k], nan_ok=True), (r["step"], k)


def test_grpo_killed_before_its_first_checkpoint_logs_step_0_once(pretrained, tmp_path, monkeypatch):
    toml, init = pretrained
    out = str(tmp_path / "early")

    def first_step_dies(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(T.grpo, "grpo_step", first_step_dies)
    with pytest.raises(KeyboardInterrupt):  # after the step-0 evaluation, before any checkpoint
        T.main(["--config", toml, "--init", init, "--out_dir", out, *GRPO_ARGS])
    assert [r["step"] for r in _read_metrics(out)] == [0]
    monkeypatch.undo()
    T.main(["--config", toml, "--init", init, "--out_dir", out, *GRPO_ARGS, "--train.resume=true"])
    assert [r["step"] for r in _read_metrics(out)] == [0, 1, 2, 3, 4]


def test_step_generator_streams_are_distinct():
    draw = lambda *a, **k: T.step_generator(*a, **k).initial_seed()
    seeds = {draw(0, step, micro) for step in range(3) for micro in range(200)}
    assert len(seeds) == 600  # a linear (seed * a + step) * 97 + micro gave chunk 97 the next step's chunk 0
    assert draw(0, 5, 0) != draw(0, 5, 0, stream=1) and draw(0, 5, 0) != draw(1, 5, 0)
    assert draw(3, 7, 2) == draw(3, 7, 2)  # a pure function: resumed runs replay


def test_grpo_stage_checks_its_config_before_loading(pretrained, tmp_path):
    toml, init = pretrained
    for arg, match in (("--grpo.agg=seqmean", "agg"), ("--grpo.group_size=1", "group_size"),
                       ("--train.batch_size=100000", "distinct prompts per step")):
        with pytest.raises(ValueError, match=match):
            T.main(["--config", toml, "--init", init, "--out_dir", str(tmp_path / "bad"), *GRPO_ARGS, arg])


def test_grpo_needs_a_checkpoint(pretrained, tmp_path):
    with pytest.raises(ValueError, match="starts from a checkpoint"):
        T.main(["--config", pretrained[0], "--stage", "grpo", "--out_dir", str(tmp_path / "g")])


PIPE = TINY.replace('stage = "pretrain"', 'stage = "pipeline"') + """
[pipeline]
steps = ["pretrain", "sft", "rl"]
[pipeline.pretrain]
train = {max_steps = 3}
[pipeline.sft]
init = "pretrain"
train = {max_steps = 2}
[pipeline.rl]
stage = "grpo"
init = "sft"
train = {max_steps = 2, batch_size = 2}
grpo = {group_size = 2, max_new_tokens = 6}
"""


@pytest.mark.parametrize("weights, match", [((0.0, 0.0), r"accuracy_weight = 0.0: must be > 0 where format_weight"),
                                            ((-1.0, 0.5), r"accuracy_weight = -1.0: must be a finite number"),
                                            ((1.0, float("nan")), r"format_weight = nan: must be a finite"),
                                            ((1.0, float("inf")), r"format_weight = inf: must be a finite")])
def test_reward_weights_are_checked(weights, match):
    cfg = T.Config()
    cfg.reward.accuracy_weight, cfg.reward.format_weight = weights
    with pytest.raises(ValueError, match=match):
        T.check_config(cfg)


def test_init_that_is_not_a_checkpoint_says_what_is_missing(pretrained, tmp_path):
    toml, init = pretrained
    run_folder = os.path.dirname(init)  # the run folder instead of its final/
    for bad, match in ((str(tmp_path / "nowhere"), "does not exist"), (run_folder, "not a complete checkpoint")):
        with pytest.raises(FileNotFoundError, match=match):
            T.main(["--config", toml, "--stage", "sft", "--init", bad, "--out_dir", str(tmp_path / "o")])


@pytest.mark.parametrize("args,match", [
    (["--stage", "grpo", "--train.batch_size=3"], "3 prompts over 2 ranks: each rank needs the same number"),
    (["--stage", "grpo", "--train.batch_size=4", "--grpo.rollout_prompts=4"], "same number of chunks on each of the 2"),
    (["--stage", "distill", "--train.grad_accum=1"], "grad_accum=1 must be a multiple of the 2 ranks"),
])
def test_rank_rules_are_checked_before_anything_runs(tiny_toml, tmp_path, monkeypatch, args, match):
    """Under torchrun (WORLD_SIZE) the settings that divide among the ranks fail before a model loads or a
    teacher samples, also for a pipeline step after others that would have trained."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=match):
        T.main(["--config", tiny_toml, "--out_dir", str(tmp_path / "o"), *args])
    from test_pipeline import TOY
    (tmp_path / "p.toml").write_text(TOY.replace("train = {max_steps = 2, batch_size = 2}",
                                                 "train = {max_steps = 2, batch_size = 3}"))
    with pytest.raises(ValueError, match="3 prompts over 2 ranks"):
        T.main(["--config", str(tmp_path / "p.toml"), "--out_dir", str(tmp_path / "p"), "--train.grad_accum=2"])
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(tmp_path / "p" / "pretrain")
