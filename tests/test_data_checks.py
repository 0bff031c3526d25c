"""data.py at its edges: what the JSONL loaders, a tokenizer folder, the templates, the [data] checks and
the synthetic specs accept and refuse, each named."""
import json

import pytest

import data as D


def test_a_line_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"question": "a", "answer": "#### 1"}\n[1, 2]\n')
    with pytest.raises(ValueError) as e:
        D.load_jsonl(str(path))
    assert str(e.value) == f"{path}, line 2: expected a JSON object, got list"


def test_a_file_without_problems_is_an_error(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match=r"e\.jsonl: no problems in the file"):
        D.load_jsonl(str(path))


def test_a_math_row_with_a_null_answer_reads_the_box(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "p", "solution": "so \\boxed{3}", "answer": None}) + "\n")
    assert D.load_jsonl(str(path)) == [{"question": "p", "solution": "so \\boxed{3}", "answer": "3"}]


def test_pad_id_is_its_own_piece(tmp_path):
    tok = D.train_tokenizer(["Compute 1 + 2.", "Solve 3x = 6."] * 50, str(tmp_path / "t"), vocab_size=300)
    assert tok.pad_id == 3 and tok.pad_id != tok.eos_id


def test_a_folder_with_both_files_loads_tokenizer_model(tmp_path):
    D.train_tokenizer(["Compute 1 + 2.", "Solve 3x = 6."] * 50, str(tmp_path / "tokenizer"), vocab_size=300)
    (tmp_path / "tokenizer.json").write_text("not read")
    assert isinstance(D.load_tokenizer(str(tmp_path)), D.Tokenizer)


def test_plain_completion_starts_on_a_new_line():
    assert D.format_completion("s", "5", "plain") == "\ns\nThe answer is \\boxed{5}."


def test_data_config_ranges_are_named():
    for kw, msg in [({"chat_frac": 1.5}, "[data].chat_frac = 1.5: must be in [0, 1]"),
                    ({"flaw_p": 1.5}, "[data].flaw_p = 1.5: must be in [0, 1]"),
                    ({"levels": "1,4"}, "[data].levels = '1,4': must be a comma list of 1, 2, 3")]:
        with pytest.raises(ValueError) as e:
            D.DataConfig(**kw).check()
        assert str(e.value).startswith(msg), (kw, str(e.value))


def test_a_generic_solution_field_must_exist(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"q": "what?", "a": "7"}) + "\n")
    with pytest.raises(ValueError) as e:
        D.load_jsonl(str(path), "generic", "q", "a", "s")
    assert str(e.value) == f"{path}, line 1: missing string field 's' (has ['a', 'q'])"


def test_math_rows_keep_unique_id(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "p", "solution": "\\boxed{1}", "unique_id": "test/x/1.json"}) + "\n")
    assert D.load_jsonl(str(path))[0]["unique_id"] == "test/x/1.json"


def test_a_synthetic_spec_picks_its_family():
    probs = D.parse_data_spec("synthetic:linear", 10, seed=0)
    assert len(probs) == 10 and {p["family"] for p in probs} == {"linear"}


def test_pretrain_chat_transcripts_box_the_answer_their_work_reaches():
    """A flawed demonstration written as a pretraining chat transcript boxes what its work reaches, as its plain
    document and its SFT target do (the demo pretrains on flaw_p = 0.5 data with chat_frac = 0.5)."""
    flawed = D.synthetic_problems(100, "add,sub,mul", "2", seed=3, flaw_p=0.5)
    docs = D.pretrain_documents(flawed, chat_frac=1.0)
    assert all(doc.endswith(f"<answer>\\boxed{{{p['final']}}}</answer>") for p, doc in zip(flawed, docs))
    assert sum(p["final"] != p["answer"] for p in flawed) > 20


def test_data_config_accepts_the_ends_of_its_ranges():
    """The edges the [data] checks name as valid: level 3, flaw_p and chat_frac of 1 (every carry dropped, every
    pretraining document a chat transcript)."""
    D.DataConfig(levels="3").check()
    D.DataConfig(levels="1,2,3", families="add", flaw_p=1.0, chat_frac=1.0).check()
