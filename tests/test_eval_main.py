"""eval.py's main() end to end on stub models: its flags reach the problems, the sampling and the report,
and what it refuses before sampling (the metrics themselves are tested in test_eval.py)."""
import json

import pytest

import eval as E
from test_eval import _AnsTok, _Tok


def _stub_main(monkeypatch, tmp_path, max_seq_len):
    seen = {}

    class M:
        cfg = type("C", (), {"max_seq_len": max_seq_len})()
    monkeypatch.setattr(E, "check_checkpoint", lambda p: None)
    monkeypatch.setattr(E, "read_run_config", lambda p: {})
    monkeypatch.setattr(E, "held_out", lambda *a: [{"question": "q", "answer": "3"}])
    monkeypatch.setattr(E, "load_checkpoint", lambda p, d: (M(), _Tok(), {}))
    monkeypatch.setattr(E.D, "resolve_template", lambda t, tok: "plain")
    monkeypatch.setattr(E, "greedy_eval", lambda *a, **kw: ({"accuracy": 0.0}, [
        {"question": "q", "gold": "3", "reward": 0.0, "length": 1}]))

    def sampled(model, tok, problems, template, n, ks, max_new_tokens, temperature, *a):
        seen["temperature"] = temperature
        return {}, [{} for _ in problems]
    monkeypatch.setattr(E, "sampled_eval", sampled)
    E.main(["--ckpt", str(tmp_path), "--n", "2", "--k", "1", "--max_new_tokens", "4", "--out",
            str(tmp_path / "r.json")])
    return seen


def test_eval_samples_at_temperature_1_by_default(monkeypatch, tmp_path):
    """E08: without --temperature the n samples of pass@k / maj@k are drawn at T = 1, not greedily."""
    assert _stub_main(monkeypatch, tmp_path, 64)["temperature"] == 1.0


def test_a_prompt_that_exactly_fits_the_context_is_evaluated(monkeypatch, tmp_path):
    """E10: prompt (2 tokens) + max_new_tokens (4) == max_seq_len (6) fits: no error, nothing skipped."""
    assert _stub_main(monkeypatch, tmp_path, 6)["temperature"] == 1.0


def _main_stub(monkeypatch, tmp_path, argv, run_cfg=None, max_seq_len=512, completion=(3,), problems=None,
               temps=None):
    """E.main on a stub model whose every completion is `completion` (decoded "The answer is <first id>."), the
    real parse_args and (unless `problems` replaces it) the real held_out; run_cfg is the checkpoint's run config;
    the temperature of each complete() call is appended to `temps`."""
    class M:
        cfg = type("C", (), {"max_seq_len": max_seq_len})()

    def complete(model, prompts, max_new_tokens, eos_id, batch_size, temperature=0.0, *a, **kw):
        if temps is not None:
            temps.append(temperature)
        return [list(completion) for _ in prompts]
    monkeypatch.setattr(E, "check_checkpoint", lambda p: None)
    monkeypatch.setattr(E, "read_run_config", lambda p: run_cfg or {})
    monkeypatch.setattr(E, "load_checkpoint", lambda p, d: (M(), _AnsTok(), run_cfg or {}))
    monkeypatch.setattr(E.D, "resolve_template", lambda t, tok: t or "plain")
    monkeypatch.setattr(E, "complete", complete)
    if problems is not None:
        monkeypatch.setattr(E, "held_out", lambda *a: problems)
    return E.main(["--ckpt", str(tmp_path), *argv])


def _run_main(monkeypatch, tmp_path, extra):
    """E.main with a stub model: every completion answers 3; problem add (gold 3) is right, mul (gold 4) wrong."""
    temps = []
    problems = [{"question": "q0", "answer": "3", "family": "add"}, {"question": "q1", "answer": "4", "family": "mul"}]
    rep = _main_stub(monkeypatch, tmp_path, ["--max_new_tokens", "4", "--out", str(tmp_path / "r.json"), *extra],
                     max_seq_len=64, problems=problems, temps=temps)
    return rep, temps


def test_temperature_zero_samples_greedily(monkeypatch, tmp_path):
    """--temperature 0 is greedy (parse_args: '0: greedy'): the n samples are drawn at 0, not at the default 1."""
    rep, temps = _run_main(monkeypatch, tmp_path, ["--n", "2", "--k", "1,2", "--temperature", "0"])
    assert temps == [0.0, 0.0] and rep["args"]["temperature"] == 0.0


def test_report_breakdown_holds_every_metric_and_greedy_only_runs_too(monkeypatch, tmp_path):
    """The breakdown by family holds greedy_correct and every pass@k / maj@k; with --n 0 (greedy only) the
    family is still known and broken down."""
    rep, _ = _run_main(monkeypatch, tmp_path, ["--n", "2", "--k", "1,2"])
    right, wrong = ({"n": 1, "greedy_correct": v, "pass@1": v, "pass@2": v, "maj@1": v, "maj@2": v} for v in (1., 0.))
    assert rep["breakdown"] == {"family": {"add": right, "mul": wrong}}
    rep, _ = _run_main(monkeypatch, tmp_path, ["--n", "0"])
    assert rep["breakdown"] == {"family": {"add": {"n": 1, "greedy_correct": 1.0},
                                           "mul": {"n": 1, "greedy_correct": 0.0}}}



def test_sample_records_carry_the_gold_answer():
    """The gold of a scored sample (and so of report.jsonl's records) is the problem's answer, not its question."""
    tok = _AnsTok()
    rec = E.score(tok, {"question": "What is 1 + 2?", "answer": "3"}, [3, 9])
    assert rec == {"question": "What is 1 + 2?", "gold": "3", "completion": "The answer is 3.", "pred": "3",
                   "reward": 1.0, "format": 0.0, "length": 2}


def test_eval_reads_the_runs_own_train_file_with_the_runs_field_names(tmp_path):
    """The run's own train file, like its test file, is read with the run's JSONL settings."""
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"q": "What is 2 + 3?", "final": "5"}) + "\n")
    run = {"data": {"train_file": str(path), "format": "generic", "question_field": "q", "answer_field": "final"}}
    assert [(p["question"], p["answer"]) for p in E.held_out(str(path), 500, run)] == [("What is 2 + 3?", "5")]


def test_synthetic_eval_of_a_run_trained_on_a_file_is_the_default_synthetic_set(tmp_path):
    """A run trained on a JSONL file has no synthetic split: --data synthetic is the spec's own 500 problems, not
    a split built from the run's data settings (its n_test, seed, its file's questions)."""
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    run = {"data": {"train_file": str(path), "n_test": 10, "seed": 3}}
    import data as D
    assert E.held_out("synthetic", None, run) == D.parse_data_spec("synthetic", 500)


def test_the_records_file_is_checked_before_sampling_too(tmp_path, monkeypatch, capsys):
    """--out rep.json with a folder rep.jsonl in the way: refused by parse_args, not after the sampling."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rep.jsonl").mkdir()
    with pytest.raises(SystemExit):
        E.parse_args(["--ckpt", "x", "--out", "rep.json"])
    assert "rep.jsonl is a folder" in capsys.readouterr().err


def test_the_report_itself_never_overwrites_the_data(tmp_path, monkeypatch, capsys):
    """--data probs.json --out probs.json: the report (not only its records) would replace the problems."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "probs.json").write_text('{"question": "1+1?", "answer": "2"}\n')
    with pytest.raises(SystemExit):
        E.parse_args(["--ckpt", "x", "--data", "probs.json", "--out", "probs.json"])
    assert "would overwrite --data" in capsys.readouterr().err


def test_jsonl_field_flags_reach_the_problems(tmp_path, monkeypatch):
    """--format / --question_field / --answer_field on the command line decide how main() reads --data."""
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"q": "What is 1 + 2?", "final": "3"}) + "\n" +
                    json.dumps({"q": "What is 2 + 2?", "final": "4"}) + "\n")
    out = tmp_path / "r.json"
    rep = _main_stub(monkeypatch, tmp_path, ["--data", str(path), "--format", "generic", "--question_field", "q",
                                             "--answer_field", "final", "--n", "0", "--out", str(out)])
    rows = [json.loads(r) for r in open(tmp_path / "r.jsonl")]
    assert [(r["question"], r["gold"]) for r in rows] == [("What is 1 + 2?", "3"), ("What is 2 + 2?", "4")]
    assert rep["greedy"]["accuracy"] == 0.5  # every completion answers 3


def test_template_flag_overrides_the_runs_template(tmp_path, monkeypatch):
    run = {"data": {"template": "r1"}}
    argv = ["--data", "synthetic:add", "--limit", "1", "--n", "0", "--max_new_tokens", "4",
            "--out", str(tmp_path / "r.json")]
    assert _main_stub(monkeypatch, tmp_path, argv, run)["template"] == "r1"  # the run's by default
    assert _main_stub(monkeypatch, tmp_path, argv + ["--template", "plain"], run)["template"] == "plain"


def test_a_foreign_checkpoint_gets_256_new_tokens_by_default(tmp_path, monkeypatch):
    """--max_new_tokens left out: the run's train.max_new_tokens, and 256 for a checkpoint without a run config."""
    argv = ["--data", "synthetic:add", "--limit", "1", "--n", "0", "--out", str(tmp_path / "r.json")]
    assert _main_stub(monkeypatch, tmp_path, argv)["args"]["max_new_tokens"] == 256
    assert _main_stub(monkeypatch, tmp_path, argv, {"train": {"max_new_tokens": 12}})["args"]["max_new_tokens"] == 12


def test_the_report_records_the_default_sampling_temperature(tmp_path, monkeypatch):
    """Without --temperature the report's args say the samples' temperature, 1.0, not None."""
    rep = _main_stub(monkeypatch, tmp_path, ["--data", "synthetic:add", "--limit", "1", "--n", "2", "--k", "1,2",
                                             "--max_new_tokens", "4", "--out", str(tmp_path / "r.json")])
    assert rep["args"]["temperature"] == 1.0
    assert json.load(open(tmp_path / "r.json"))["args"]["temperature"] == 1.0


def test_tokens_per_s_counts_greedy_and_sampled_tokens(tmp_path, monkeypatch):
    """2 problems, 3-token completions: 2 greedy + 2 x 2 sampled = 6 completions, 18 tokens in 2 s: 9 tokens/s."""
    import types
    monkeypatch.setattr(E, "time", types.SimpleNamespace(time=iter([100.0, 102.0]).__next__))
    rep = _main_stub(monkeypatch, tmp_path, ["--data", "synthetic:add", "--limit", "2", "--n", "2", "--k", "1,2",
                                             "--max_new_tokens", "4", "--out", str(tmp_path / "r.json")],
                     completion=(3, 9, 9))
    assert rep["tokens_per_s"] == 9.0


def test_the_report_folder_is_created(tmp_path, monkeypatch):
    """--out in folders that do not exist yet (parse_args accepts them): they are made, report and records land."""
    out = tmp_path / "new" / "sub" / "r.json"
    _main_stub(monkeypatch, tmp_path, ["--data", "synthetic:add", "--limit", "1", "--n", "0", "--max_new_tokens",
                                       "4", "--out", str(out)])
    assert out.is_file() and (tmp_path / "new" / "sub" / "r.jsonl").is_file()


def test_a_prompt_that_fills_the_context_alone_is_named_as_such(tmp_path, monkeypatch):
    """Prompts of 2 tokens in a context of 2: no max_new_tokens can fit, so the hint is not 'lower
    --max_new_tokens' but that the model cannot read these problems."""
    with pytest.raises(ValueError, match="the shortest prompt alone has 2 tokens: this model cannot read"):
        _main_stub(monkeypatch, tmp_path, ["--data", "synthetic:add", "--limit", "1", "--n", "0", "--max_new_tokens",
                                           "1", "--skip_long", "--out", str(tmp_path / "r.json")], max_seq_len=2)
