"""data.py: tokenizer round trip, synthetic tasks checked by independent arithmetic, splits, loaders, batching."""
import json
import re
from fractions import Fraction

import pytest
import torch

import data as D


@pytest.fixture(scope="module")
def problems():
    cfg = D.DataConfig(n_train=600, n_test=120, levels="1,2,3")
    return D.synthetic_splits(cfg)


@pytest.fixture(scope="module")
def tok(problems, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("tok") / "tokenizer")
    return D.train_tokenizer(D.tokenizer_corpus(problems[0]), prefix, vocab_size=400)


def test_tokenizer_round_trip_every_family_and_template(problems, tok):
    train, test = problems
    seen = set()
    for p in train + test:
        seen.add(p["family"])
        for t in ("plain", "r1"):
            text = D.format_prompt(p["question"], t) + D.format_completion(p["solution"], p["answer"], t)
            assert tok.decode(tok.encode(text)) == text
    assert seen == set(D.FAMILIES)
    # unseen characters go through byte fallback, not <unk>
    assert tok.decode(tok.encode("x² ≥ 1 😀")) == "x² ≥ 1 😀"
    # an id past the vocabulary (a padded embedding row a model sampled) decodes to nothing, not an error
    assert tok.decode(tok.encode("12 + 7") + [tok.vocab_size, tok.vocab_size + 50]) == "12 + 7"


def test_tokenizer_digits_and_tags_are_single_pieces(tok):
    pieces = [tok.sp.id_to_piece(i) for i in tok.encode("12345 <think>")]
    assert [p for p in pieces if p.strip("▁").isdigit()] == list("12345")
    assert "<think>" in pieces
    assert tok.encode("a", bos=True, eos=True)[0] == tok.bos_id and tok.encode("a", eos=True)[-1] == tok.eos_id


def test_tokenizer_saved_and_loaded(tok, tmp_path):
    tok.save(str(tmp_path))
    tok2 = D.load_tokenizer(str(tmp_path))
    text = "Compute 12 + 34.\n<think>\n</think>"
    assert tok2.encode(text) == tok.encode(text)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        D.load_tokenizer(str(tmp_path / "nowhere"))


def _solve_independently(p):
    """The gold answer computed from the question text alone, without the generator's code."""
    q = p["question"]
    if p["family"] in ("add", "sub", "mul"):
        a, op, b = re.fullmatch(r"Compute (\d+) ([-+*]) (\d+)\.", q).groups()
        a, b = int(a), int(b)
        return str({"+": a + b, "-": a - b, "*": a * b}[op])
    if p["family"] == "fraction":
        a, b, op, c, d = re.fullmatch(r"Compute (\d+)/(\d+) ([-+*]) (\d+)/(\d+)\.", q).groups()
        x, y = Fraction(int(a), int(b)), Fraction(int(c), int(d))
        r = {"+": x + y, "-": x - y, "*": x * y}[op]
        return str(r.numerator) if r.denominator == 1 else \
            ("-" if r < 0 else "") + f"\\frac{{{abs(r.numerator)}}}{{{r.denominator}}}"
    if p["family"] == "linear":
        lhs, rhs = re.fullmatch(r"Solve (.+) = (.+)\.", q).groups()
        f = lambda s, x: eval(re.sub(r"(\d)x", r"\1*x", s).replace("x", f"({x})"))  # our own generated text
        roots = [x for x in range(-50, 51) if f(lhs, x) == f(rhs, x)]
        assert len(roots) == 1, q
        return str(roots[0])
    if p["family"] == "quadratic":
        expr = re.fullmatch(r"Solve: (.+) = 0", q).group(1)
        f = lambda x: eval(re.sub(r"(\d)x", r"\1*x", expr).replace("^", "**").replace("x", f"({x})"))
        return ", ".join(str(x) for x in range(-50, 51) if f(x) == 0)
    raise AssertionError(p["family"])


def test_gold_answers_match_independent_computation(problems):
    for p in problems[0] + problems[1]:
        assert p["answer"] == _solve_independently(p), p


def test_clean_solutions_state_the_gold_answer(problems):
    for p in problems[0]:
        if p["family"] in ("add", "sub", "mul"):
            assert p["solution"].splitlines()[-1].endswith(f"= {p['answer']}."), p


def test_flawed_demonstrations_keep_true_gold_and_same_questions():
    clean = D.synthetic_problems(300, "add,sub,mul", "2", seed=7)
    flawed = D.synthetic_problems(300, "add,sub,mul", "2", seed=7, flaw_p=1.0)
    assert [p["question"] for p in clean] == [p["question"] for p in flawed]  # flaw_p changes only solutions
    wrong = 0
    for c, f in zip(clean, flawed):
        assert c["answer"] == f["answer"] == _solve_independently(f)
        stated = f["solution"].splitlines()[-1].rsplit("= ", 1)[1].rstrip(".")
        if "carry 1" in c["solution"] or "borrow 1" in c["solution"] or re.search(r"carry [1-9]", c["solution"]):
            wrong += stated != c["answer"]
        else:
            assert stated == c["answer"]  # no carry to drop: the demonstration stays right
    assert wrong > 100


def test_flawed_demonstration_boxes_the_answer_its_work_reaches():
    """The flaw runs through to the end: the SFT target's boxed answer is the flawed result, never the gold one
    (a demonstration whose work says 76 but whose box says 66 would teach nothing consistent)."""
    flawed = D.synthetic_problems(300, "add,sub,mul", "1,2", seed=3, flaw_p=0.5)
    tok = D.Tokenizer.__new__(D.Tokenizer)  # encode_sft only needs encode(): use a character-level stand-in
    tok.encode = lambda text, bos=False, eos=False: [ord(c) for c in text]
    differ = 0
    for p in flawed:
        stated = p["solution"].splitlines()[-1].rsplit("= ", 1)[1].rstrip(".")
        _, completion = D.encode_sft(tok, p, "plain")
        text = "".join(map(chr, completion))
        assert text.endswith(f"\\boxed{{{stated}}}.") and stated == p["final"], (p, text)
        assert f"\\boxed{{{stated}}}" in D.format_document(p)
        differ += stated != p["answer"]
    assert differ > 50


def test_splits_disjoint_and_deterministic(problems):
    train, test = problems
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert len({p["question"] for p in train}) == len(train)
    again = D.synthetic_splits(D.DataConfig(n_train=600, n_test=120, levels="1,2,3"))
    assert again == (train, test)


def test_unknown_family_and_too_many_problems():
    with pytest.raises(ValueError, match="unknown task family 'nope'"):
        D.synthetic_problems(5, "nope", "1", seed=0)
    with pytest.raises(ValueError, match="distinct problems"):
        D.synthetic_problems(10_000, "quadratic", "1", seed=0)


def test_sft_mask_covers_exactly_the_completion():
    pairs = [([1, 10, 11], [20, 21, 2]), ([1, 12], [22, 2])]
    x, y, mask = D.sft_batch(pairs, pad_id=3)
    assert x.tolist() == [[1, 10, 11, 20, 21], [1, 12, 22, 3, 3]]
    assert y.tolist() == [[10, 11, 20, 21, 2], [12, 22, 2, 3, 3]]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    # the masked targets are exactly the completion tokens, in order
    for (p, c), yi, mi in zip(pairs, y, mask):
        assert yi[mi.bool()].tolist() == c


def test_encode_sft_and_packed_batch(problems, tok):
    p = problems[0][0]
    prompt, comp = D.encode_sft(tok, p, "r1")
    assert tok.decode(prompt) == D.format_prompt(p["question"], "r1")
    assert comp[-1] == tok.eos_id and tok.decode(comp).startswith(" <think>")
    stream = D.pack_documents(tok, [D.format_document(q) for q in problems[0][:50]])
    x, y = D.packed_batch(stream, 4, 32, torch.Generator().manual_seed(0))
    assert x.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="seq_len"):
        D.packed_batch(stream[:10], 4, 32, torch.Generator())


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_gsm8k_and_math_loaders(tmp_path):
    g = _write(tmp_path / "g.jsonl", [{"question": "2+2?", "answer": "Add them: 4\n#### 4"}, "",
                                      {"question": "Big?", "answer": "so\n#### 1,000"}])
    rows = D.load_jsonl(g)
    assert rows[0] == {"question": "2+2?", "solution": "Add them: 4", "answer": "4"} and rows[1]["answer"] == "1,000"
    m = _write(tmp_path / "m.jsonl", [{"problem": "p", "solution": "s \\boxed{5}", "answer": "5",
                                       "subject": "Algebra", "level": 2}])
    assert D.load_jsonl(m)[0] == {"question": "p", "solution": "s \\boxed{5}", "answer": "5",
                                  "subject": "Algebra", "level": 2}
    gen = _write(tmp_path / "x.jsonl", [{"q": "what?", "a": 7}])
    assert D.load_jsonl(gen, "generic", "q", "a")[0]["answer"] == "7"


def test_malformed_jsonl_names_file_and_line(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [{"question": "a", "answer": "#### 1"}, "{oops", "{}"])
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: malformed JSON"):
        D.load_jsonl(bad)
    missing = _write(tmp_path / "miss.jsonl", [{"question": "a", "answer": "#### 1"}, {"question": "b"}])
    with pytest.raises(ValueError, match=r"miss\.jsonl, line 2: .*'answer'"):
        D.load_jsonl(missing, "gsm8k")
    nohash = _write(tmp_path / "nohash.jsonl", [{"question": "a", "answer": "1"}])
    with pytest.raises(ValueError, match=r"line 1: GSM8K answer has no '#### x'"):
        D.load_jsonl(nohash, "gsm8k")
    for name, line in (("huge.jsonl", '{"question": "a", "answer": ' + "9" * 5000 + "}"),
                       ("deep.jsonl", "[" * 100_000 + "]" * 100_000)):  # json's own limits, not JSONDecodeError
        path = tmp_path / name
        path.write_text('{"question": "a", "answer": "#### 1"}\n' + line + "\n")
        with pytest.raises(ValueError, match=rf"{name}, line 2: unreadable JSON"):
            D.load_jsonl(str(path))


def test_templates():
    assert D.format_prompt("Q?", "plain") == "Question: Q?\nAnswer:"
    r1 = D.format_prompt("Q?", "r1")
    assert "<think> </think>" in r1 and "<answer> </answer>" in r1 and r1.endswith("User: Q? Assistant:")
    c = D.format_completion("steps", "5", "r1")
    assert c == " <think>\nsteps\n</think>\n<answer>\\boxed{5}</answer>"
    with pytest.raises(ValueError, match="unknown template"):
        D.format_prompt("Q", "chatml")


def test_hf_tokenizer_json_loads_through_tokenizers(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # comes with transformers (dev)
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(["Compute 12 + 7.", "Solve 3x + 5 = 20."] * 20,
                          trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}}))
    tok = D.load_tokenizer(str(tmp_path))
    assert isinstance(tok, D.HFTokenizer) and (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
    ids = tok.encode("Compute 12 + 7.", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids) == "Compute 12 + 7."
    assert tok.decode(ids[:-1] + [tok.vocab_size + 7] + ids[-1:]) == "Compute 12 + 7."  # a padded row's id
    (tmp_path / "copy").mkdir()
    tok.save(str(tmp_path / "copy"))
    assert D.load_tokenizer(str(tmp_path / "copy")).encode("Solve 3x") == tok.encode("Solve 3x")
    by_file = D.load_tokenizer(str(tmp_path / "tokenizer.json"))  # the file itself: read with its folder
    assert isinstance(by_file, D.HFTokenizer) and by_file.encode("Solve 3x") == tok.encode("Solve 3x")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="give that folder"):
        D.load_tokenizer(str(tmp_path / "other.json"))


def _hf_tokenizer(folder, specials, config):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(["Compute 12 + 7.", "Solve 3x + 5 = 20.", "Please reason step by step"] * 20,
                          trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"],
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.add_special_tokens([AddedToken(s, special=True) for s in specials])
    t.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return t


def test_qwen_chat_template_from_tokenizer_json(tmp_path):
    # Qwen2.5-Math base: eos_token <|endoftext|>, no bos; the ChatML turn ends with <|im_end|>
    t = _hf_tokenizer(tmp_path, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                      {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    tok = D.load_tokenizer(str(tmp_path))
    im_start, im_end = t.token_to_id("<|im_start|>"), t.token_to_id("<|im_end|>")
    assert tok.chat_template == "qwen" and tok.eos_id == im_end and tok.bos_id is None
    assert tok.stop_ids == [im_end, t.token_to_id("<|endoftext|>")]  # sampling stops at the base model's eos too
    assert tok.pad_id == t.token_to_id("<|endoftext|>")
    assert D.resolve_template("chat", tok) == "qwen" and D.resolve_template("r1", tok) == "r1"
    prompt = D.format_prompt("Compute 12 + 7.", "qwen")
    assert prompt == ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}."
                      "<|im_end|>\n<|im_start|>user\nCompute 12 + 7.<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(prompt, bos=True)
    assert ids[0] == im_start and ids.count(im_start) == 3 and ids.count(im_end) == 2  # one id each, no bos
    p, c = D.encode_sft(tok, {"question": "Compute 12 + 7.", "solution": "12 + 7 = 19", "answer": "19"}, "qwen")
    assert c[-1] == im_end and tok.decode(c) == "12 + 7 = 19\nThe final answer is \\boxed{19}."


def test_deepseek_r1_chat_template_and_no_chat_format(tmp_path):
    _hf_tokenizer(tmp_path, ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"],
                  {"bos_token": {"content": "<｜begin▁of▁sentence｜>"}, "eos_token": {"content": "<｜end▁of▁sentence｜>"}})
    tok = D.load_tokenizer(str(tmp_path))
    assert tok.chat_template == "deepseek-r1" and D.resolve_template("chat", tok) == "deepseek-r1"
    prompt = D.format_prompt("Solve 3x + 5 = 20.", "deepseek-r1")
    assert prompt.startswith("<｜User｜>Solve 3x + 5 = 20.\nPlease reason") and prompt.endswith("<｜Assistant｜><think>\n")
    ids = tok.encode(prompt, bos=True)
    assert ids[0] == tok.bos_id and tok.tk.id_to_token(ids[1]) == "<｜User｜>"
    assert tok.eos_id == tok.tk.token_to_id("<｜end▁of▁sentence｜>")
    assert D.format_completion("s", "5", "deepseek-r1") == "s\n</think>\n\nThe final answer is \\boxed{5}."
    other = tmp_path / "plain"
    other.mkdir()
    _hf_tokenizer(other, ["<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"})
    with pytest.raises(ValueError, match="needs a tokenizer.json with a known chat format"):
        D.resolve_template("chat", D.load_tokenizer(str(other)))


def test_hf_tokenizer_without_config_takes_the_chat_formats_eos(tmp_path):
    # tokenizer.json alone: the chat format's end of turn is eos, and padding falls back to it
    for name, specials, eos in (("qwen", ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
                                ("ds", ["<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"], "<｜end▁of▁sentence｜>")):
        (tmp_path / name).mkdir()
        t = _hf_tokenizer(tmp_path / name, specials, {})
        (tmp_path / name / "tokenizer_config.json").unlink()
        tok = D.load_tokenizer(str(tmp_path / name))
        assert tok.eos_id == tok.pad_id == t.token_to_id(eos), name
        assert tok.encode("Compute", eos=True)[-1] == tok.eos_id
    (tmp_path / "plain").mkdir()
    _hf_tokenizer(tmp_path / "plain", ["<s>", "</s>"], {"bos_token": "<s>"})
    with pytest.raises(ValueError, match="no eos token"):
        D.load_tokenizer(str(tmp_path / "plain"))


def test_train_file_without_test_file_warns_of_synthetic_evaluation(capsys):
    cfg = D.DataConfig(train_file="gsm8k_train.jsonl", n_test=3, families="add")
    assert len(D.load_problems(cfg, "test")) == 3
    assert "held-out evaluation uses synthetic problems (add)" in capsys.readouterr().out
    D.load_problems(D.DataConfig(n_test=3, families="add"), "test")
    assert "warning" not in capsys.readouterr().out


def test_tokenizer_saves_after_its_source_file_is_deleted(problems, tmp_path):
    # a resumed run loads the tokenizer from a checkpoint that rotation later deletes, then saves it again
    src = tmp_path / "src"
    src.mkdir()
    D.train_tokenizer(D.tokenizer_corpus(problems[0][:100]), str(src / "tokenizer"), vocab_size=400)
    tok = D.load_tokenizer(str(src / "tokenizer.model"))
    (src / "tokenizer.model").unlink()
    (tmp_path / "out").mkdir()
    tok.save(str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tokenizer.model"]  # no temp file left
    text = "Compute 12 + 34.\n<think>\n</think>"
    assert D.load_tokenizer(str(tmp_path / "out")).encode(text) == tok.encode(text)


def test_hf_tokenizer_saves_after_its_folder_is_deleted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _hf_tokenizer(src, ["<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"})
    (src / "chat_template.jinja").write_text("{{ messages }}")  # where transformers' save_pretrained puts it
    tok = D.load_tokenizer(str(src))
    assert tok.stop_ids == [tok.eos_id]
    for f in src.iterdir():
        f.unlink()
    src.rmdir()
    (tmp_path / "out").mkdir()
    tok.save(str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["chat_template.jinja", "tokenizer.json",
                                                                   "tokenizer_config.json"]
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == "{{ messages }}"
    tok2 = D.load_tokenizer(str(tmp_path / "out"))
    assert (tok2.bos_id, tok2.eos_id) == (tok.bos_id, tok.eos_id)
    text = "Solve 3x + 5 = 20."
    assert tok2.encode(text, bos=True, eos=True) == tok.encode(text, bos=True, eos=True)


def test_auto_format_is_decided_per_row(tmp_path):
    # GSM8K and MATH rows share a file: each row is read in its own format
    gm = _write(tmp_path / "gm.jsonl", [{"question": "2+3?", "answer": "2+3=5\n#### 5"},
                                        {"problem": "p", "solution": "so \\boxed{7}"}])
    assert D.load_jsonl(gm) == [{"question": "2+3?", "solution": "2+3=5", "answer": "5"},
                                {"question": "p", "solution": "so \\boxed{7}", "answer": "7"}]
    # the FIRST row lacks '#### x': not a generic file whose gold answers are whole solutions, but an error
    first = _write(tmp_path / "first.jsonl", [{"question": "4+4?", "answer": "4+4=8, so 8"},
                                              {"question": "2+3?", "answer": "2+3=5\n#### 5"},
                                              {"question": "1+1?", "answer": "#### 2"}])
    with pytest.raises(ValueError) as e:
        D.load_jsonl(first)
    assert str(e.value) == f"{first}, line 1: GSM8K answer has no '#### x' final answer " \
                           "(line 2 and 1 other row have one)"
    # a tie names the generic row; so does a math row beside them (math rows do not count)
    g = _write(tmp_path / "g.jsonl", [{"problem": "p", "solution": "\\boxed{1}"},
                                      {"question": "2+3?", "answer": "2+3=5\n#### 5"},
                                      {"question": "4+4?", "answer": "4+4=8, so 8"}])
    with pytest.raises(ValueError, match=r"g\.jsonl, line 3: GSM8K answer has no '#### x' .* \(line 2 has one\)$"):
        D.load_jsonl(g)
    # mostly generic: the odd one out is the answer holding '####'
    gen = _write(tmp_path / "gen.jsonl", [{"question": "a", "answer": "1"}, {"question": "b", "answer": "see #### 2"},
                                          {"question": "c", "answer": "3"}])
    with pytest.raises(ValueError, match=r"gen\.jsonl, line 2: answer holds a GSM8K '####' but line 1 and 1 other"):
        D.load_jsonl(gen)
    assert D.load_jsonl(gen, "generic")[1]["answer"] == "see #### 2"  # explicit formats hold every row to them
    # math and generic rows load side by side (the generic row's gold is its own 'answer')
    m = _write(tmp_path / "m.jsonl", [{"problem": "p", "solution": "\\boxed{1}"},
                                      {"question": "q", "solution": "\\boxed{2}", "answer": "2"}])
    assert D.load_jsonl(m) == [{"question": "p", "solution": "\\boxed{1}", "answer": "1"},
                               {"question": "q", "answer": "2", "solution": ""}]
    with pytest.raises(ValueError, match=r"m\.jsonl, line 2: missing string field 'problem'"):
        D.load_jsonl(m, "math")
    with pytest.raises(ValueError, match="unknown JSONL format 'csv'"):
        D.load_jsonl(g, "csv")


def test_empty_or_non_string_gold_answers_and_questions_are_errors(tmp_path):
    good = {"gsm8k": {"question": "q", "answer": "s\n#### 1"}, "math": {"problem": "p", "solution": "\\boxed{1}"},
            "generic": {"question": "q", "answer": "1"}}
    not_str = "'answer' must be a string or a number, got "
    cases = [("gsm8k", {"question": "q", "answer": "s\n####"}, "'answer' has nothing after its '####'"),
             ("gsm8k", {"question": " ", "answer": "s\n#### 2"}, "'question' is empty"),
             ("math", {"problem": "p", "solution": "s", "answer": ""}, "'answer' is empty"),
             ("math", {"problem": "p", "solution": "s \\boxed{}"},
              "no 'answer' field and an empty \\boxed{} in 'solution'"),
             ("math", {"problem": "p", "solution": "s", "answer": [3]}, not_str + "list [3]"),
             ("math", {"problem": "p", "solution": "s", "answer": True}, not_str + "bool true"),
             ("math", {"problem": "", "solution": "\\boxed{2}"}, "'problem' is empty"),
             ("generic", {"question": "q", "answer": False}, not_str + "bool false"),
             ("generic", {"question": "", "answer": "2"}, "'question' is empty"),
             ("generic", {"question": 7, "answer": "2"}, "'question' must be a string, got int 7")]
    for fmt, row, msg in cases:
        path = _write(tmp_path / "bad.jsonl", [good[fmt], row])
        with pytest.raises(ValueError) as e:
            D.load_jsonl(path, fmt)
        assert str(e.value) == f"{path}, line 2: {msg}", (fmt, row)
    # numbers (not bools) stay gold answers, as strings
    path = _write(tmp_path / "num.jsonl", [{"problem": "p", "solution": "s", "answer": 3}])
    assert D.load_jsonl(path)[0]["answer"] == "3"
    path = _write(tmp_path / "num.jsonl", [{"question": "q", "answer": 2.5}])
    assert D.load_jsonl(path)[0]["answer"] == "2.5"
    path = _write(tmp_path / "nosol.jsonl", [{"problem": "p", "solution": "", "answer": "4"}])  # a gold, no working
    assert D.load_jsonl(path) == [{"question": "p", "solution": "", "answer": "4"}]


def test_non_utf8_file_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "a", "answer": "#### 1"}\n{"question": "caf\xe9?", "answer": "#### 2"}\n')
    with pytest.raises(ValueError) as e:
        D.load_jsonl(str(path))
    assert str(e.value) == f"{path}, line 2: not UTF-8 (invalid continuation byte at byte 18 of the line)"
    path.write_text('{"question": "ok", "answer": "#### 1"}\n{"question": "bad \\ud800 q", "answer": "#### 2"}\n')
    with pytest.raises(ValueError) as e:  # a JSON escape that decodes to a lone surrogate: valid JSON, no text
        D.load_jsonl(str(path))
    assert str(e.value) == f"{path}, line 2: 'question' holds '\\ud800', a lone surrogate (not valid Unicode)"


def test_a_damaged_tokenizer_model_is_named(tmp_path):
    for name, content in (("empty.model", b""), ("garbage.model", b"not a model")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{tmp_path / name} is not a sentencepiece model \(empty or damaged"):
            D.load_tokenizer(str(tmp_path / name))


def test_data_config_check_names_the_bad_key():
    D.DataConfig(families=" add, linear ", template="chat").check()
    D.DataConfig(template="qwen").check()  # a resolved "chat", as a finished run records it
    with pytest.raises(ValueError, match=r"\[data\]\.test_file = 'nope/test.jsonl': must be an existing JSONL file"):
        D.DataConfig(test_file="nope/test.jsonl").check()  # named before anything loads or trains
    for kw, msg in [({"n_train": 0}, "[data].n_train = 0: must be >= 1"),
                    ({"families": ""}, "[data].families = '': must be a comma list of add, sub, mul, linear, "
                                       "quadratic, fraction (at least one)"),
                    ({"families": "add,fractions"}, "[data].families = 'add,fractions': must be a comma list of"),
                    ({"template": "chatml"}, "[data].template = 'chatml': must be one of plain, r1, qwen, deepseek-r1 "
                                             "or chat")]:
        with pytest.raises(ValueError) as e:
            D.DataConfig(**kw).check()
        assert str(e.value).startswith(msg), kw


def test_default_splits_hold_no_commuted_twin_of_a_fraction_question():
    # "Compute 8/7 + 6/5." in test and "Compute 6/5 + 8/7." in train would leak the test answer
    train, test = D.synthetic_splits(D.DataConfig())
    pat = re.compile(r"Compute (\d+/\d+) ([+*]) (\d+/\d+)\.")
    twin = lambda q: pat.sub(r"Compute \3 \2 \1.", q)
    test_q = {p["question"] for p in test if p["family"] == "fraction"}
    train_q = {p["question"] for p in train if p["family"] == "fraction"}
    assert len(test_q) > 50 and sum(pat.fullmatch(q) is not None for q in test_q) > 20
    assert not {twin(q) for q in test_q} & train_q - test_q  # a self-twin (1/2 + 1/2) is no leak
    assert not {twin(q) for q in train_q} & test_q - train_q
    assert not {twin(q) for q in train_q if twin(q) != q} & train_q  # one order per pair, within a split too


def test_non_finite_gold_numbers_and_rows_missing_their_answer_are_named(tmp_path):
    for v in ("NaN", "Infinity", "-Infinity"):  # json reads them; "\\boxed{nan}" must not be a right answer
        path = tmp_path / "inf.jsonl"
        path.write_text('{"question": "q", "answer": 1}\n{"question": "q2", "answer": %s}\n' % v)
        with pytest.raises(ValueError) as e:
            D.load_jsonl(str(path))
        assert str(e.value).startswith(f"{path}, line 2: 'answer' must be a finite number, got ")
    # auto format, a GSM8K file with one row whose answer is missing: not "no '#### x'", but the missing field
    gsm = _write(tmp_path / "gsm.jsonl", [{"question": "a", "answer": "s #### 1"},
                                          {"question": "b", "answr": "s #### 2"},
                                          {"question": "c", "answer": "s #### 3"}])
    with pytest.raises(ValueError) as e:
        D.load_jsonl(gsm)
    assert str(e.value) == f"{gsm}, line 2: missing string field 'answer' (has ['answr', 'question'])"


def test_flaw_p_needs_synthetic_arithmetic(tmp_path):
    D.DataConfig(flaw_p=0.5, families="mul,linear").check()
    train = _write(tmp_path / "train.jsonl", [{"question": "q", "answer": "1"}])
    for kw in ({"families": "linear,fraction"}, {"train_file": train}):
        with pytest.raises(ValueError, match=r"\[data\]\.flaw_p = 0\.5: must be 0 unless synthetic training problems "
                                             r"of add, sub or mul"):
            D.DataConfig(flaw_p=0.5, **kw).check()


def test_tokenizer_trains_on_more_distinct_characters_than_pieces(tmp_path):
    # byte fallback: the rarest characters become byte pieces instead of failing the training
    texts = [f"Compute {i} + {2 * i}: the sum is {3 * i}." for i in range(600)] + [chr(0x4E00 + i) for i in range(400)]
    tok = D.train_tokenizer(texts, str(tmp_path / "tok"), vocab_size=512)  # 400 characters of 1.6% of the text
    assert all(tok.decode(tok.encode(t)) == t for t in texts)
    as_bytes = sum(len(tok.encode(chr(0x4E00 + i))) == 3 for i in range(400))  # UTF-8: 3 byte pieces
    assert 100 < as_bytes < 400 and len(tok.encode("Compute")) < 7, as_bytes  # the rest have pieces; merges learned
    uniform = [chr(0x4E00 + i) * 20 for i in range(400)]  # no 98% of the text fits 512 pieces: name the key
    with pytest.raises(ValueError, match="data.vocab_size=512 on text of 400 distinct characters .* raise data.vocab"):
        D.train_tokenizer(uniform, str(tmp_path / "tok2"), vocab_size=512)


def test_generic_missing_key_lists_only_the_rows_fields(tmp_path):
    gen = _write(tmp_path / "gen.jsonl", [{"question": "q1", "answer": 1}, {"question": "q2", "ans": "2"}])
    with pytest.raises(ValueError) as e:
        D.load_jsonl(gen, "generic")
    assert str(e.value).endswith("line 2: missing string field 'answer' (has ['ans', 'question'])")


def test_packed_batch_draws_every_window_including_the_last():
    seq_len = 16
    x, y = D.packed_batch(torch.arange(seq_len + 1), 2, seq_len, torch.Generator().manual_seed(0))
    assert x.tolist() == [list(range(16))] * 2 and y.tolist() == [list(range(1, 17))] * 2  # the only window
    stream = torch.arange(40)  # 24 windows of 17 tokens: starts 0..23
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(50):
        x, y = D.packed_batch(stream, 8, seq_len, g)
        assert torch.equal(y, x + 1)
        starts.update(x[:, 0].tolist())
    assert starts == set(range(24))  # 400 draws: every start, the last (y ends on the stream's last token) too
    with pytest.raises(ValueError, match="fewer than seq_len"):
        D.packed_batch(torch.arange(seq_len), 2, seq_len, g)


# edges that mutation testing found unpinned (review M2)


class _CharTok:
    """A character-level stand-in: bos 1, eos 2, a character its code point."""
    bos_id, eos_id = 1, 2

    def encode(self, text, bos=False, eos=False):
        return ([1] if bos else []) + [ord(c) for c in text] + ([2] if eos else [])


def test_pack_documents_is_bos_doc_eos_each():
    assert D.pack_documents(_CharTok(), ["ab", "c"]).tolist() == [1, 97, 98, 2, 1, 99, 2]


def test_encode_sft_truncates_to_seq_len_plus_one_tokens():  # D29, D30
    p = {"question": "Q", "solution": "s", "answer": "5"}
    tok = _CharTok()
    prompt, full = D.encode_sft(tok, p, "plain")
    n = len(prompt) + len(full)  # untruncated: bos + prompt, completion + eos
    # exactly seq_len + 1 tokens fit (x and y are each seq_len long): no cut
    assert D.encode_sft(tok, p, "plain", seq_len=n - 1) == (prompt, full)
    # one fewer: the completion loses its last token, the prompt stays whole
    assert D.encode_sft(tok, p, "plain", seq_len=n - 2) == (prompt, full[:-1])
    # a prompt longer than the window: empty completion, never a negative slice
    assert D.encode_sft(tok, p, "plain", seq_len=3) == (prompt, [])


def test_synthetic_spec_names():  # D18, D19
    assert D.is_synthetic_spec("synthetic") and D.is_synthetic_spec("synthetic:add")
    assert not D.is_synthetic_spec("synthetic_gsm.jsonl")  # a file, as the docstring promises
    assert "no file synthetic_gsm.jsonl" in D.check_data_spec("synthetic_gsm.jsonl")
    assert D.check_data_spec("synthetic:add, linear") is None
    assert "names no family" in D.check_data_spec("synthetic:")
    assert "names no family" in D.check_data_spec("synthetic: , ")
    assert "unknown families ['nope']" in D.check_data_spec("synthetic:add,nope")


def test_loader_edge_rows(tmp_path):  # D12, D14
    g = tmp_path / "g.jsonl"
    g.write_text(json.dumps({"question": "q", "answer": "a #### b\n#### 5"}) + "\n")
    assert D.load_jsonl(str(g)) == [{"question": "q", "solution": "a #### b", "answer": "5"}]
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"q": "what?", "a": "7", "s": ""}) + "\n")
    assert D.load_jsonl(str(gen), "generic", "q", "a", "s") == [{"question": "what?", "answer": "7", "solution": ""}]


def test_data_config_bounds():  # D34, D36
    D.DataConfig(n_test=0).check()
    D.DataConfig(seq_len=2).check()
    with pytest.raises(ValueError, match=r"\[data\]\.seq_len = 1: must be at least 2"):
        D.DataConfig(seq_len=1).check()


def test_hf_tokenizer_adds_bos_only_when_asked(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(["Compute 12 + 7."] * 20,
                          trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    tok = D.load_tokenizer(str(tmp_path))
    plain = t.encode("Compute 12", add_special_tokens=False).ids
    assert tok.encode("Compute 12") == plain
    assert tok.encode("Compute 12", eos=True) == plain + [2]
    assert tok.encode("Compute 12", bos=True) == [1] + plain
