"""report.py: what the report evaluates (template, context, defaults from the base config) and how it reports
wall times, with the evaluation stubbed."""
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

import pipeline
import report
import train as T
from model import ModelConfig
from test_pipeline_config import _pcfg


def test_a_steps_context_is_its_init_checkpoints(tmp_path):
    init = tmp_path / "hf"
    init.mkdir()
    (init / "config.json").write_text(json.dumps(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4,
                                                             n_kv_heads=2, hidden_dim=48, max_seq_len=100).to_hf()))
    cfg = _pcfg(tmp_path, {"steps": ["sft", "grpo"], "sft": {"init": str(init)}, "grpo": {"init": "sft"}})
    steps = pipeline.pipeline_configs(cfg, T.RUNNERS)
    assert cfg.model.max_seq_len != 100
    assert report.context_length("grpo", steps) == report.context_length("sft", steps) == 100


def test_report_defaults_follow_the_base_config(tmp_path):
    cfg = _pcfg(tmp_path, {"steps": ["pretrain"], "report": {}}, ["--train.max_new_tokens=20", "--data.n_test=7"])
    spec = report.report_spec(cfg, pipeline.pipeline_configs(cfg, T.RUNNERS))
    assert (spec["max_new_tokens"], spec["n_test"], spec["n"], spec["k"]) == (20, 7, 16, [1, 4, 16])
    test_file = tmp_path / "test.jsonl"  # a test file: data.n_test (synthetic only) may be 0, the report's n_test set
    test_file.write_text('{"question": "1+1", "answer": "2"}\n')
    cfg = _pcfg(tmp_path, {"steps": ["pretrain"], "report": {"n_test": 5}}, [f"--data.test_file={test_file}",
                                                                           "--data.n_test=0"])
    assert report.report_spec(cfg, pipeline.pipeline_configs(cfg, T.RUNNERS))["n_test"] == 5


class _Model:
    cfg = SimpleNamespace(max_seq_len=10)

    def num_params(self):
        return 1


def _fake_eval(monkeypatch, template, seen):
    monkeypatch.setattr(report.E, "load_checkpoint", lambda ckpt, device: (_Model(), None,
                                                                           {"data": {"template": template}}))
    monkeypatch.setattr(report.E, "encode_prompts", lambda tok, problems, tmpl: [[0] * 6 for _ in problems])
    monkeypatch.setattr(report.E, "run_bf16", lambda run_cfg: False)

    def greedy(model, tok, problems, tmpl, max_new, desc=""):
        seen.append(tmpl)
        return {"accuracy": 0.5, "format_rate": 1.0, "mean_len": 3.0}, None
    monkeypatch.setattr(report.E, "greedy_eval", greedy)


def test_report_evaluates_in_the_steps_template_and_checks_its_context(monkeypatch):
    seen = []
    _fake_eval(monkeypatch, "r1", seen)
    cpu = torch.device("cpu")
    row = report.evaluate_step("ck", [{"question": "q", "answer": "a"}], {"max_new_tokens": 4}, False, cpu)
    assert seen == ["r1"] and row == {"params": 1, "greedy": 0.5, "format_rate": 1.0, "mean_len": 3.0}  # 6 + 4 fits
    with pytest.raises(ValueError, match=r"max_new_tokens = 5: with the longest test prompt \(6 tokens\) it exceeds"):
        report.evaluate_step("ck", [{"question": "q", "answer": "a"}], {"max_new_tokens": 5}, False, cpu)


def test_a_distill_step_without_wall_time_reports_nan(tmp_path, monkeypatch):
    cfg = _pcfg(tmp_path, {"steps": ["pretrain", "student"], "student": {"stage": "distill",
                                                                         "distill": {"teacher": "pretrain"}},
                           "report": {"distill": ["pretrain", "student"], "n_test": 2}}, ["--data.n_test=4"])
    steps = pipeline.pipeline_configs(cfg, T.RUNNERS)
    monkeypatch.setattr(report, "evaluate_all", lambda calls, jobs: [{"greedy": 0.0, "params": 1} for _ in calls])
    monkeypatch.setattr(report, "plot_curves", lambda *a, **k: False)
    os.makedirs(cfg.out_dir)
    with open(os.path.join(cfg.out_dir, "pipeline.jsonl"), "w") as f:  # only pretrain's time is known
        f.write(json.dumps({"step": "pretrain", "wall_s": 3.0, "finished": True}) + "\n")
        f.write(json.dumps({"step": "sft", "wall_s": 9.0, "finished": True}) + "\n")  # an earlier run's step, left out
    rep = report.write_report(cfg, steps)
    rows = {r["step"]: r for r in rep["distill"]}
    assert rows["pretrain"]["wall_s"] == 3.0 and rows["pretrain"]["with_init_s"] == 3.0
    assert math.isnan(rows["student"]["wall_s"]) and math.isnan(rows["student"]["with_init_s"])
    assert rep["wall_s"] == {"pretrain": 3.0}  # the steps of this run only
    first = open(os.path.join(cfg.out_dir, "report.md")).read().splitlines()[2]
    assert "Wall time per step (s): pretrain 3; this report's evaluations" in first, first


def test_trained_questions_are_the_training_split_of_a_step_with_its_own_data(tmp_path):
    """What the report leaves out is what a step with [data] settings of its own trained on: its training split,
    not its test split (which is the base test split's first problems, and would leave trained-on ones in)."""
    import data as D
    cfg = _pcfg(tmp_path, {"steps": ["pretrain", "sft"], "sft": {"init": "pretrain"}},
                ["--data.n_test=20", "--data.n_train=50", "--pipeline.sft.data.n_test=2"])
    steps = pipeline.pipeline_configs(cfg, T.RUNNERS)
    sft = dict(steps)["sft"]
    assert report.trained_questions(cfg, steps) == {p["question"] for p in D.load_problems(sft.data, "train")}


def test_report_max_new_tokens_from_the_command_line_is_a_count(tmp_path):
    """--pipeline.report.max_new_tokens=16 arrives as the string "16": it is read as 16, and 0 is refused before
    anything trains (as n and n_test are)."""
    from test_pipeline import TOY
    (tmp_path / "toy.toml").write_text(TOY)
    cfg = T.load_config(str(tmp_path / "toy.toml"), ["--pipeline.report.max_new_tokens=16"])
    assert report.report_spec(cfg, pipeline.pipeline_configs(cfg, T.RUNNERS))["max_new_tokens"] == 16
    cfg = T.load_config(str(tmp_path / "toy.toml"), ["--pipeline.report.max_new_tokens=0"])
    with pytest.raises(ValueError, match=r"\[pipeline\.report\]\.max_new_tokens = 0: must be an integer >= 1"):
        pipeline.pipeline_configs(cfg, T.RUNNERS)


def test_report_checks_the_context_of_a_step_it_only_distills(tmp_path):
    """A step named only in `distill` is evaluated too: its context must hold the report's max_new_tokens, said
    before the first step trains rather than when the report runs after all of them."""
    cfg = _pcfg(tmp_path, {"steps": ["pretrain", "student"],
                           "student": {"stage": "distill", "model": {"max_seq_len": 64},
                                       "distill": {"teacher": "pretrain"}},
                           "report": {"distill": ["student"], "max_new_tokens": 64}})
    with pytest.raises(ValueError, match=r"\[pipeline\.report\]\.max_new_tokens = 64: step 'student'.s model has "
                                         r"max_seq_len 64"):
        pipeline.pipeline_configs(cfg, T.RUNNERS)


def test_a_report_whose_every_test_problem_was_trained_on_is_refused(tmp_path, monkeypatch):
    """A step with [data] of its own that trained on every base test problem leaves the report none: an error,
    not a report of accuracies over zero problems."""
    cfg = _pcfg(tmp_path, {"steps": ["pretrain"], "report": {}},
                ["--data.families=quadratic", "--data.levels=1", "--data.n_test=3", "--data.n_train=10",
                 "--pipeline.pretrain.data.n_test=0", "--pipeline.pretrain.data.n_train=45"])
    steps = pipeline.pipeline_configs(cfg, T.RUNNERS)  # quadratic level 1 has 45 problems: pretrain trains on all
    monkeypatch.setattr(report, "evaluate_all", lambda calls, jobs: [{"greedy": 0.0, "params": 1} for _ in calls])
    monkeypatch.setattr(report, "plot_curves", lambda *a, **k: False)
    os.makedirs(cfg.out_dir)
    with pytest.raises(ValueError, match="every test problem is a training question of some step"):
        report.write_report(cfg, steps)
    assert not os.path.exists(os.path.join(cfg.out_dir, "report.json"))
