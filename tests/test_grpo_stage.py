"""The grpo stage's pieces in train.py: the reward function, the per-step metrics of the decoded samples, the
reward moving average, and a resume right after a reference reset."""
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

import train as T
from reward import accuracy_reward, format_reward
from test_train import GRPO_ARGS, _read_metrics, cut_and_resume_grpo, pretrained  # noqa: F401 (pretrained: fixture)


class TextTok:
    """decode: the completion ids index a list of texts (one id per completion)."""
    TEXTS = ["<think>2+2</think> <answer>4</answer>",   # right, well formatted
             "<think>2+2</think> <answer>5</answer>",   # wrong, well formatted
             "the answer is \\boxed{4}",                 # right, no format
             "no idea"]                                  # wrong, no format

    def decode(self, ids):
        return self.TEXTS[ids[0]]


def test_reward_fn_weights_accuracy_and_format():
    assert [accuracy_reward(t, "4") for t in TextTok.TEXTS] == [1.0, 0.0, 1.0, 0.0]  # the premise
    assert [format_reward(t) for t in TextTok.TEXTS] == [1.0, 1.0, 0.0, 0.0]
    fn = T.make_reward_fn(TextTok(), {(7, 8): "4"}, T.RewardConfig(accuracy_weight=2.0, format_weight=0.25))
    assert [fn([7, 8], [i]) for i in range(4)] == [(2.25, 1.0), (0.25, 0.0), (2.0, 1.0), (0.0, 0.0)]
    plain = T.make_reward_fn(TextTok(), {(7, 8): "4"}, T.RewardConfig())
    assert [plain([7, 8], [i]) for i in range(4)] == [(1.0, 1.0), (0.0, 0.0), (1.0, 1.0), (0.0, 0.0)]


def test_rollout_metrics_split_lengths_by_accuracy():
    class Tok:
        decode = staticmethod(lambda ids: TextTok.TEXTS[ids[0]])
    samples = [{"completion_ids": [0, 1, 1], "accuracy": 1.0},        # formatted, right, 3 tokens
               {"completion_ids": [1] * 5, "accuracy": 0.0},          # formatted, wrong, 5
               {"completion_ids": [2] * 7, "accuracy": 1.0},          # unformatted, right, 7
               {"completion_ids": [3] * 9, "accuracy": 0.0}]          # unformatted, wrong, 9
    m = T.rollout_metrics(Tok(), samples)
    assert m == {"format_rate": 0.5, "len_correct": 5.0, "len_wrong": 7.0}
    # reduce sums over ranks: here a stand-in that doubles every sum (two identical ranks) leaves the means
    assert T.rollout_metrics(Tok(), samples, reduce=lambda t: 2 * t) == m
    m = T.rollout_metrics(Tok(), samples[1::2])  # nothing right: NaN, not 0
    assert math.isnan(m["len_correct"]) and m["len_wrong"] == 7.0 and m["format_rate"] == 0.5


def test_grpo_reward_ema_and_a_resume_after_a_ref_reset(pretrained, tmp_path, monkeypatch):
    """reward_ema = 0.9 ema + 0.1 reward_mean (the first step's reward_mean to start); and a run cut after a
    checkpoint that follows a reference reset (ref_update_every=2, checkpoint at 2) resumes onto the same weights:
    the reset reference is restored, not the init checkpoint."""
    toml, init = pretrained
    monkeypatch.setattr(T, "make_reward_fn", lambda *a: lambda p, c: (sum(t % 2 for t in c) / max(1, len(c)), 0.0))
    args = [a for a in GRPO_ARGS if not a.startswith("--grpo.ref_update_every")] + ["--grpo.ref_update_every=2",
                                                                                    "--grpo.beta=0.5"]
    ref = str(tmp_path / "ref")
    T.main(["--config", toml, "--init", init, "--out_dir", ref, *args])
    rows = [r for r in _read_metrics(ref) if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    ema = None
    for r in rows:
        ema = r["reward_mean"] if ema is None else 0.9 * ema + 0.1 * r["reward_mean"]
        assert r["reward_ema"] == pytest.approx(ema)
    assert len({r["reward_mean"] for r in rows}) > 1  # the rewards move, so a wrong weighting shows
    out = str(tmp_path / "cut")  # killed at step 3, after the step-2 checkpoint (whose reference was just reset)
    cut_and_resume_grpo(monkeypatch, ["--config", toml, "--init", init, "--out_dir", out, *args], at=3)
    a = load_file(os.path.join(ref, "final", "model.safetensors"))
    b = load_file(os.path.join(out, "final", "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_grpo_picks_new_prompts_each_step_and_rolls_out_on_its_own_stream(pretrained, tmp_path, monkeypatch):
    """Step s takes randperm(step_generator(seed, s, 0))[:batch_size] of the prompts, and chunk c samples
    with step_generator(seed, s, 1 + c), a stream apart from the picks."""
    toml, init = pretrained
    seen, real = [], T.grpo.grpo_step
    monkeypatch.setattr(T.grpo, "grpo_step", lambda policy, ref, opt, prompts, *a, generator, **k: seen.append(
        ([tuple(p) for p in prompts], [g.initial_seed() for g in generator])) or real(policy, ref, opt, prompts, *a,
                                                                                       generator=generator, **k))
    encoded, encode = [], T.E.encode_prompts  # the training prompts, in the order the picks index
    monkeypatch.setattr(T.E, "encode_prompts", lambda *a, **k: encoded.append(encode(*a, **k)) or encoded[-1])
    T.main(["--config", toml, "--init", init, "--out_dir", str(tmp_path / "g"), "--stage", "grpo",
            "--train.max_steps=2", "--train.batch_size=2", "--train.eval_n=0", "--train.seed=5",
            "--grpo.group_size=2", "--grpo.max_new_tokens=4"])
    assert len(seen) == 2 and seen[0][0] != seen[1][0]
    prompts = encoded[0]
    for step, (picked, seeds) in enumerate(seen):
        pick = torch.randperm(len(prompts), generator=T.step_generator(5, step, 0))[:2].tolist()
        assert picked == [tuple(prompts[i]) for i in pick]
        assert seeds == [T.step_generator(5, step, 1).initial_seed()]


def test_grpo_may_take_every_training_prompt_each_step(pretrained, tmp_path):
    """batch_size equal to the number of training prompts is allowed (only more is refused)."""
    toml, init = pretrained
    T.main(["--config", toml, "--init", init, "--out_dir", str(tmp_path / "g"), "--stage", "grpo",
            "--data.n_train=2", "--train.max_steps=1", "--train.batch_size=2", "--train.eval_n=0",
            "--grpo.group_size=2", "--grpo.max_new_tokens=4"])
    assert os.path.exists(tmp_path / "g" / "final" / "model.safetensors")


def test_grpo_logs_n_samples_completions_per_step(pretrained, tmp_path):
    """samples.jsonl gets train.n_samples of a step's completions in all, not n_samples of each rollout chunk
    (rollout_prompts = 1: two chunks of 4 completions)."""
    toml, init = pretrained
    out = tmp_path / "g"
    T.main(["--config", toml, "--init", init, "--out_dir", str(out), "--stage", "grpo", "--train.max_steps=2",
            "--train.batch_size=2", "--train.eval_n=0", "--train.n_samples=3", "--train.log_every=1",
            "--grpo.group_size=4", "--grpo.max_new_tokens=4", "--grpo.rollout_prompts=1"])
    rows = [json.loads(r) for r in open(out / "samples.jsonl")]
    assert [r["step"] for r in rows] == [1, 1, 1, 2, 2, 2]
