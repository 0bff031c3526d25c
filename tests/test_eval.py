"""eval.py: pass@k against the exact combinatorial formula, majority vote, and an end-to-end report."""
import json
import math
import os

import pytest

import eval as E
import report
import train as T
from reward import is_equiv
from test_train import TINY


def exact_pass_at_k(n, c, k):
    return 1 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n", [1, 2, 5, 16, 64, 200])
def test_pass_at_k_matches_exact_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert E.pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edges_and_errors():
    assert E.pass_at_k(10, 0, 5) == 0.0         # c = 0
    assert E.pass_at_k(10, 10, 1) == 1.0        # c = n
    assert E.pass_at_k(10, 7, 4) == 1.0         # n - c < k: every k-subset holds a right one
    assert E.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert E.pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    assert 0.0 < E.pass_at_k(10_000, 3, 10) < 1.0  # large n: no overflow, stays a probability
    with pytest.raises(ValueError, match="k <= n"):
        E.pass_at_k(4, 1, 5)


def test_synthetic_eval_set_is_the_runs_held_out_split():
    import data as D
    run = {"data": {"families": "add,sub,mul", "levels": "1", "n_train": 1500, "n_test": 60, "seed": 7}}
    dc = D.DataConfig(**run["data"])
    train, test = D.synthetic_splits(dc)
    seen = {p["question"] for p in train}
    assert [p["question"] for p in E.held_out("synthetic", 60, run)] == [p["question"] for p in test]
    assert E.held_out("synthetic", None, run) == test  # --n_test left out: the run's own n_test
    assert len(E.held_out("synthetic", None, {})) == 500  # a foreign checkpoint: 500
    for spec in ("synthetic", "synthetic:add", "synthetic:add,linear"):  # other families, other sizes
        got = E.held_out(spec, 100, run)
        assert len(got) == 100 and not seen & {p["question"] for p in got}, spec
    # a foreign checkpoint (no run config) gets the spec's own defaults
    assert E.held_out("synthetic:add", 5, {}) == D.parse_data_spec("synthetic:add", 5)


def test_majority_vote_pools_equivalent_answers():
    assert E.majority_vote(["\\frac{1}{2}", "3", "0.5", "1/2", "3"]) == "\\frac{1}{2}"
    assert E.majority_vote([None, None, "7"]) == "7"             # None never wins
    assert E.majority_vote([None, None]) is None and E.majority_vote([]) is None
    assert E.majority_vote(["2", "3", "3", "2"]) == "2"           # tie: the first seen
    assert E.majority_vote(["2, 3", "4", "3, 2"]) == "2, 3"       # sets of roots in any order
    # is_equiv reads its second argument as the gold (a list gold "1, 2" accepts the tuple "(2,1)", not the
    # reverse): answers pool only when equal both ways, so the tuple (2,1) outvotes the list
    assert E.majority_vote(["1, 2", "(2,1)", "(2,1)"]) == "(2,1)"


def test_complete_batches_prompts_of_like_length_and_returns_them_in_order():
    """complete() sorts by prompt length (stable) before batching, and puts every completion back in its place:
    the same completions as each prompt alone, greedy."""
    import torch
    from model import ModelConfig, Transformer
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=24,
                                    max_seq_len=32)).eval()
    prompts = [[1] * 7, [2, 3], [4] * 5, [5, 6], [7] * 9, [8]]
    batches = []
    generate = model.generate

    def recording(batch, *a, **kw):
        batches.append([len(p) for p in batch])
        return generate(batch, *a, **kw)
    model.generate = recording
    out = E.complete(model, prompts, 4, None, batch_size=2)
    assert batches == [[1, 2], [2, 5], [7, 9]]  # by length; the two of length 2 in their given order
    model.generate = generate
    assert out == [model.generate([p], 4, temperature=0.0)[0] for p in prompts]


def test_end_to_end_report(tmp_path):
    (tmp_path / "t.toml").write_text(TINY)
    out = str(tmp_path / "run")
    T.main(["--config", str(tmp_path / "t.toml"), "--out_dir", out, "--train.max_steps=2", "--train.eval_n=0"])
    report_path = str(tmp_path / "report.json")
    rep = E.main(["--ckpt", os.path.join(out, "final"), "--data", "synthetic:add,linear", "--limit", "3",
                  "--n", "4", "--k", "1,2,4", "--max_new_tokens", "8", "--n_test", "20", "--out", report_path])
    saved = json.load(open(report_path))
    assert saved["n_problems"] == 3 and saved["template"] == "plain"
    assert set(saved["sampled"]) == {"pass@1", "pass@2", "pass@4", "maj@1", "maj@2", "maj@4"}
    assert 0 <= saved["greedy"]["accuracy"] <= 1 and saved["greedy"]["mean_len"] <= 8
    assert set(saved["breakdown"]["family"]) <= {"add", "linear"}
    rows = [json.loads(r) for r in open(str(tmp_path / "report.jsonl"))]
    assert len(rows) == 3 and all(len(r["samples"]) == 4 for r in rows)
    for r in rows:  # the report's numbers follow from the samples on disk
        c = sum(s["reward"] for s in r["samples"])
        assert r["correct"] == c and r["pass@4"] == (1.0 if c else 0.0)
    assert rep["sampled"]["pass@4"] == pytest.approx(sum(r["pass@4"] for r in rows) / 3)

    # a GSM8K-style file: one prompt too long for max_seq_len 256 -> a clear error, or dropped with --skip_long
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n" +
                   json.dumps({"question": "word " * 300, "answer": "#### 1"}) + "\n")
    args = ["--ckpt", os.path.join(out, "final"), "--data", str(gsm), "--n", "0", "--max_new_tokens", "4",
            "--out", str(tmp_path / "g.json")]
    with pytest.raises(ValueError, match="1 of 2 prompts .* exceed the model's max_seq_len 256"):
        E.main(args)
    rep = E.main(args + ["--skip_long"])
    assert rep["n_problems"] == 1 and rep["skipped_long"] == 1 and "sampled" not in rep
    # without --max_new_tokens: the budget the run evaluated with (train.max_new_tokens = 12), which fits its context
    rep = E.main(args[:6] + args[8:] + ["--skip_long"])
    assert rep["args"]["max_new_tokens"] == 12 and rep["greedy"]["mean_len"] <= 12
    with pytest.raises(ValueError, match="no prompt fits max_seq_len 256 with max_new_tokens 250: lower --max_new"):
        E.main(args[:6] + ["--max_new_tokens", "250", "--skip_long"] + args[8:])
    gsm.write_text(json.dumps({"question": "word " * 300, "answer": "#### 1"}) + "\n")  # too long on its own
    with pytest.raises(ValueError, match=r"max_new_tokens 4: the shortest prompt alone has \d+ tokens: this model "
                                         "cannot read these problems"):
        E.main(args + ["--skip_long"])


def test_ask_one_question(tmp_path, capsys):
    """--prompt with max_new_tokens 256 on a model whose context is 256: the answer takes the room the context
    leaves instead of failing; the printout ends with the extracted answer."""
    (tmp_path / "t.toml").write_text(TINY)
    out = str(tmp_path / "run")
    T.main(["--config", str(tmp_path / "t.toml"), "--out_dir", out, "--train.max_steps=1", "--train.eval_n=0"])
    E.main(["--ckpt", os.path.join(out, "final"), "--prompt", "Compute 478 + 356.", "--max_new_tokens", "256"])
    printed = capsys.readouterr().out
    assert "extracted answer:" in printed.splitlines()[-1]
    with pytest.raises(ValueError, match="the prompt is .* tokens; the model's max_seq_len is 256"):
        E.main(["--ckpt", os.path.join(out, "final"), "--prompt", "Compute 1 + 2. " * 200])
    # greedy unless --temperature is given; then --seed and --top_p count
    ask = ["--ckpt", os.path.join(out, "final"), "--prompt", "Compute 478 + 356.", "--max_new_tokens", "24"]
    answers = []
    for extra in ([], ["--seed", "1"], ["--temperature", "1.5", "--seed", "1"], ["--temperature", "1.5", "--seed", "1"],
                  ["--temperature", "1.5", "--seed", "2"], ["--temperature", "1.5", "--seed", "1", "--top_p", "1e-6"]):
        capsys.readouterr()
        E.main(ask + extra)
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1]  # greedy: the seed plays no part
    assert answers[2] == answers[3] != answers[4]  # sampled: the seed decides
    assert answers[5] == answers[0]  # top_p that keeps one token is greedy


def test_majority_vote_is_order_free_and_a_blank_answer_never_wins():
    """is_equiv is not transitive ("2, 1" and "1, 2" are the same list, but only "1, 2" is the tuple (1, 2)), so
    grouping answers in order of appearance made maj@k depend on the order; votes per distinct answer do not."""
    import itertools
    for gold, answers in (("(1, 2)", ["2, 1", "1, 2", "1, 2"]), ("y=5", ["x=5", "y=5", "5", "5"])):
        for perm in itertools.permutations(answers):
            vote = E.majority_vote(list(perm))
            assert vote is not None and is_equiv(vote, gold), (perm, vote)
    assert E.majority_vote(["", " ", "5"]) == "5" and E.majority_vote(["", None]) is None


def test_broken_run_config_and_empty_held_out_split_are_named(tmp_path):
    (tmp_path / "run_config.json").write_text('{"data": {"template": "r1"')
    with pytest.raises(ValueError, match="run_config.json is not valid JSON"):
        E.read_run_config(str(tmp_path))
    run = {"data": {"n_test": 0, "n_train": 50, "families": "add", "levels": "1"}}
    with pytest.raises(ValueError, match=r"no held-out problems \(data.n_test = 0\); pass --n_test N"):
        E.held_out("synthetic", None, run)
    assert len(E.held_out("synthetic", 7, run)) == 7


def test_bad_input_fails_before_sampling(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no config, weights, tokenizer file$"):
        E.main(["--ckpt", str(tmp_path), "--data", "synthetic"])
    os.makedirs(tmp_path / "final")  # a run folder given for its checkpoint
    with pytest.raises(FileNotFoundError, match=r"no config, weights, tokenizer file \(a run folder\? its "
                                                 rf"checkpoint is {tmp_path / 'final'}\)"):
        E.main(["--ckpt", str(tmp_path), "--data", "synthetic"])
    for prompt, why in (("", "--prompt is empty"), (" ", "--prompt is empty"),
                        (b"a\xffb".decode("utf-8", "surrogateescape"), "--prompt is not valid UTF-8")):
        with pytest.raises(SystemExit):  # "" used to run the whole synthetic evaluation instead
            E.parse_args(["--ckpt", "x", "--prompt", prompt])
        assert why in capsys.readouterr().err
    with pytest.raises(SystemExit):
        E.parse_args(["--ckpt", "x", "--n", "4", "--k", "1,8"])
    # without --k, the k of 1,4,16 that --n samples allow
    assert [E.parse_args(["--ckpt", "x", "--n", n]).k for n in ("16", "4", "2", "0")] == [[1, 4, 16], [1, 4], [1], [1]]


@pytest.mark.parametrize("args,match", [(["--limit", "-1"], "--limit -1"), (["--n_test", "0"], "--n_test 0"),
                                        (["--k", "0,1"], "--k"), (["--k", "a"], "--k 'a'"),
                                        (["--batch_size", "0"], "--batch_size 0"), (["--n", "-2"], "--n -2"),
                                        (["--max_new_tokens", "0"], "--max_new_tokens 0"),
                                        (["--out", "rep.jsonl"], "the samples go beside it"),
                                        (["--k", "1,1", "--n", "4"], "each k once"),
                                        (["--data", "probs.jsonl", "--out", "probs.json"], "would overwrite --data"),
                                        (["--data", "synthetic.jsonl", "--out", "synthetic.json"],
                                         "would overwrite --data"),  # a file, though its name starts "synthetic"
                                        (["--data", "nothere.jsonl"], "no file nothere.jsonl"),
                                        (["--data", "synthetic_x.jsonl"], "no file synthetic_x.jsonl"),
                                        (["--data", "synthetic:"], "names no family"),
                                        (["--data", "synthetic:add,cube"], "unknown families ['cube']"),
                                        (["--temperature", "-1"], "--temperature -1"),
                                        (["--temperature", "nan"], "--temperature nan"),
                                        (["--top_p", "0"], "--top_p 0"), (["--top_p", "1.5"], "--top_p 1.5"),
                                        (["--template", "foo"], "--template foo"),
                                        (["--device", "foo"], "--device foo"),
                                        (["--out", "afolder"], "afolder is a folder"),
                                        (["--out", "afile/r.json"], "afile is a file")])
def test_bad_arguments_name_the_flag(args, match, capsys, tmp_path, monkeypatch):
    """Every bad flag is refused by parse_args, before a model is loaded or a problem sampled."""
    monkeypatch.chdir(tmp_path)
    for name in ("probs.jsonl", "synthetic.jsonl", "afile"):
        (tmp_path / name).write_text('{"question": "1+1?", "answer": "2"}\n')
    (tmp_path / "afolder").mkdir()
    with pytest.raises(SystemExit):
        E.parse_args(["--ckpt", "x", *args])
    assert match in capsys.readouterr().err
    assert E.parse_args(["--ckpt", "x", "--n", "0", "--k", "0"]).n == 0  # greedy only: k is not used
    assert E.parse_args(["--ckpt", "x", "--data", "synthetic:add, linear"]).data == "synthetic:add, linear"


def test_records_go_beside_the_report_under_a_name_of_their_own():
    assert E.records_path("runs/report.json") == "runs/report.jsonl"
    assert E.records_path("runs/T0.5") == "runs/T0.5.jsonl" != E.records_path("runs/T0.7")


class AnswerTok:
    """A stand-in tokenizer: a completion [n] reads "The answer is n."."""
    eos_id, stop_ids = 0, [0]

    def encode(self, text, bos=False):
        return [1, 2]

    def decode(self, ids):
        return f"The answer is {ids[0]}."


def test_sampled_means_are_exact_and_a_repeated_k_counts_once(monkeypatch):
    """Every sample right on 10 problems: pass@k and maj@k are exactly 1.0 (a running sum of x / 10 gives
    0.9999999999999999), and a k given twice is one metric, not a sum of two."""
    problems = [{"question": f"q{i}", "answer": str(i + 3)} for i in range(10)]
    answers = iter([[i + 3] for i in range(10) for _ in range(4)])  # the 4 samples of problem i answer i + 3
    monkeypatch.setattr(E, "complete", lambda model, flat, *a, **kw: [next(answers) for _ in flat])
    metrics, records = E.sampled_eval(None, AnswerTok(), problems, "plain", 4, [1, 1, 2, 4], 8)
    assert metrics == {"pass@1": 1.0, "pass@2": 1.0, "pass@4": 1.0, "maj@1": 1.0, "maj@2": 1.0, "maj@4": 1.0}
    assert all(r["correct"] == 4 for r in records)


def test_eval_reads_the_runs_own_jsonl_with_the_runs_field_names(tmp_path):
    """A run trained and evaluated on a generic JSONL with its own field names: eval.py on that file takes the
    gold from the run's answer_field (the golds train.py evaluated against), and --answer_field overrides it."""
    rows = [{"q": "What is 2 + 3?", "final": "5", "answer": "2 plus 3 makes 5."},
            {"q": "What is 4 * 4?", "final": "16", "answer": "4 times 4 is 16."}]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = {"data": {"test_file": str(path), "format": "generic", "question_field": "q", "answer_field": "final",
                    "solution_field": "answer"}}
    golds = lambda probs: [p["answer"] for p in probs]  # noqa: E731
    assert golds(E.held_out(str(path), 500, run)) == ["5", "16"]
    assert golds(E.held_out(str(path), 500, run, {"answer_field": "answer"})) == [r["answer"] for r in rows]
    other = tmp_path / "other.jsonl"  # not the run's file: load_jsonl's own defaults
    other.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}) + "\n")
    assert golds(E.held_out(str(other), 500, run)) == ["2"]


def test_majority_vote_pools_answers_only_when_they_are_equal_both_ways():
    assert is_equiv("(2,1)", "1, 2") and not is_equiv("1, 2", "(2,1)")  # a pair answers a list, not back
    # "7" x2 against "(2,1)" x2, a tie that the first seen wins; "1, 2" pooled one way would give "(2,1)" 3 votes
    assert E.majority_vote(["7", "7", "1, 2", "(2,1)", "(2,1)"]) == "7"


def test_breakdown_means_each_group_over_its_own_problems():
    recs = [{"family": "a", "pass@1": 1.0}, {"family": "a", "pass@1": 0.0}, {"family": "b", "pass@1": 1.0}]
    assert E.breakdown(recs, ["pass@1"]) == {"family": {"a": {"n": 2, "pass@1": 0.5}, "b": {"n": 1, "pass@1": 1.0}}}


def test_maj_at_k_votes_over_the_first_k_samples(monkeypatch):
    answers = iter([[3], [9], [9], [9]])  # sample 1 is right, samples 2-4 agree on a wrong answer
    monkeypatch.setattr(E, "complete", lambda model, flat, *a, **kw: [next(answers) for _ in flat])
    m, _ = E.sampled_eval(None, AnswerTok(), [{"question": "q", "answer": "3"}], "plain", 4, [1, 4], 8)
    assert m["maj@1"] == 1.0 and m["maj@4"] == 0.0 and m["pass@1"] == 0.25 and m["pass@4"] == 1.0


def test_eval_runs_in_the_runs_precision(tmp_path, monkeypatch):
    """On CUDA, train.py evaluates under bf16 autocast when train.bf16 is set, and greedy decodes change with the
    precision: eval.py's --bf16 auto follows the run (fp32 for a checkpoint made elsewhere), on/off override it.
    The decision is checked here through the autocast call eval.py makes (CPU runs fp32 either way)."""
    assert E.run_bf16({"train": {"bf16": True}}) and not E.run_bf16({"train": {"bf16": False}})
    assert E.run_bf16({"train": {}}) and not E.run_bf16({})  # the run's default is true; an outside folder fp32
    assert E.run_bf16({}, "on") and not E.run_bf16({"train": {"bf16": True}}, "off")
    (tmp_path / "t.toml").write_text(TINY)
    out = str(tmp_path / "run")
    T.main(["--config", str(tmp_path / "t.toml"), "--out_dir", out, "--train.max_steps=1", "--train.eval_n=0",
            "--train.bf16=false"])
    seen = []
    real = E.autocast
    monkeypatch.setattr(E, "autocast", lambda device, enabled=True: seen.append(enabled) or real(device, enabled))
    args = ["--ckpt", os.path.join(out, "final"), "--n", "0", "--limit", "1", "--max_new_tokens", "2",
            "--out", str(tmp_path / "r.json")]
    for flag, want in (("auto", False), ("on", True), ("off", False)):
        E.main(args + ["--bf16", flag])
        assert seen.pop() is want
    with pytest.raises(NotADirectoryError, match="is a file: pass the folder that holds it"):
        E.main(["--ckpt", os.path.join(out, "final", "config.json")])


class _Tok:
    stop_ids = [0]

    def __init__(self, texts=None):
        self.texts = texts or {}

    def encode(self, s, bos=True):
        return [1, 2]

    def decode(self, ids):
        return self.texts[ids[0]]


def test_pass_at_k_refuses_k_zero():
    """E17: k must be >= 1."""
    with pytest.raises(ValueError):
        E.pass_at_k(4, 1, 0)


def test_greedy_eval_format_rate_counts_the_format_not_the_reward(monkeypatch):
    """E07: a well-formatted wrong answer: format_rate 1, accuracy 0; and generation stops at the tokenizer's stop ids
    (E15)."""
    seen = {}

    def complete(model, prompts, max_new_tokens, eos_id, *a, **kw):
        seen["eos"] = eos_id
        return [[7] for _ in prompts]
    monkeypatch.setattr(E, "complete", complete)
    tok = _Tok({7: "<think>add</think> <answer>4</answer>"})
    metrics, _ = E.greedy_eval(None, tok, [{"question": "1+2?", "answer": "3"}], "plain", 8)
    assert metrics["format_rate"] == 1.0 and metrics["accuracy"] == 0.0
    assert seen["eos"] == [0]


def test_maj_at_k_reads_the_vote_against_the_gold_as_gold(monkeypatch):
    """E13: every sample answers '(2, 1)'; the gold '1, 2' (an unordered list) accepts it: pass@1 and maj@1 are 1."""
    monkeypatch.setattr(E, "complete", lambda model, flat, *a, **kw: [[7] for _ in flat])
    tok = _Tok({7: "The answer is $(2, 1)$"})
    metrics, _ = E.sampled_eval(None, tok, [{"question": "q", "answer": "1, 2"}], "plain", 2, [1, 2], 8)
    assert metrics == {"pass@1": 1.0, "pass@2": 1.0, "maj@1": 1.0, "maj@2": 1.0}


def test_the_report_evaluates_in_the_runs_precision(tmp_path, monkeypatch):
    """R9: report.evaluate_step asks for bf16 autocast when the run trained with train.bf16 (default true), as
    eval.py's --bf16 auto does (checked through the autocast call; CPU runs fp32 either way)."""
    import torch
    import eval as E
    from test_train import TINY
    (tmp_path / "t.toml").write_text(TINY)
    out = str(tmp_path / "run")
    T.main(["--config", str(tmp_path / "t.toml"), "--out_dir", out, "--train.max_steps=1", "--train.eval_n=0"])
    seen, real = [], E.autocast
    monkeypatch.setattr(E, "autocast", lambda device, enabled=True: seen.append(enabled) or real(device, enabled))
    report.evaluate_step(os.path.join(out, "final"), [{"question": "1+1", "answer": "2"}], {"max_new_tokens": 2},
                         False, torch.device("cpu"))
    assert seen == [True]



def test_autocast_is_off_when_not_enabled_even_on_cuda():
    """E1: eval.autocast (train.py's too) gives no autocast on CUDA when train.bf16 is false; no GPU needed to
    build the context."""
    import contextlib
    import warnings
    import torch
    import eval as E
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CPU-only torch warns that CUDA autocast is disabled
        assert isinstance(E.autocast(torch.device("cuda"), False), contextlib.nullcontext)
        assert isinstance(E.autocast(torch.device("cuda"), True), torch.autocast)
    assert isinstance(E.autocast(torch.device("cpu"), True), contextlib.nullcontext)


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1)])
def test_pass_at_k_refuses_c_outside_0_n(n, c, k):
    """More correct samples than samples (or a negative count) is refused, not scored 1.0 or 0.0."""
    with pytest.raises(ValueError, match="0 <= c <= n"):
        E.pass_at_k(n, c, k)


def test_breakdown_by_subject_and_level_names():
    """MATH subjects get their own breakdown; levels are grouped under their string form (1 and "1" are one
    level, as they are once the report is JSON)."""
    recs = [{"subject": "Algebra", "level": 1, "m": 1.0}, {"subject": "Algebra", "level": "1", "m": 0.0},
            {"subject": "Geometry", "level": 2, "m": 1.0}]
    assert E.breakdown(recs, ["m"]) == {
        "subject": {"Algebra": {"n": 2, "m": 0.5}, "Geometry": {"n": 1, "m": 1.0}},
        "level": {"1": {"n": 2, "m": 0.5}, "2": {"n": 1, "m": 1.0}}}


def test_check_checkpoint_takes_sharded_weights_and_a_hf_tokenizer(tmp_path):
    """A Hugging Face folder (model.safetensors.index.json, tokenizer.json) is a complete checkpoint."""
    for name in ("config.json", "model.safetensors.index.json", "tokenizer.json"):
        (tmp_path / name).write_text("{}")
    E.check_checkpoint(str(tmp_path))
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        E.check_checkpoint(str(tmp_path))


class _AnsTok:
    stop_ids = [0]

    def encode(self, text, bos=False):
        return [1, 2]

    def decode(self, ids):
        return f"The answer is {ids[0]}."


def test_greedy_mean_len_is_the_mean(monkeypatch):
    """Completions of 1 and 3 tokens: mean_len 2; answers 3 (right) and 5 (wrong for gold 4): accuracy 0.5."""
    monkeypatch.setattr(E, "complete", lambda model, prompts, *a, **kw: [[3], [5, 9, 9]])
    m, _ = E.greedy_eval(None, _AnsTok(), [{"question": "a", "answer": "3"}, {"question": "b", "answer": "4"}],
                         "plain", 8)
    assert m == {"accuracy": 0.5, "format_rate": 0.0, "mean_len": 2.0}
