"""tasks.py and the data built from it: splits, the test set under flaw_p, pretraining documents."""
import data as D


def test_pretrain_documents_chat_frac_extremes():
    probs = D.synthetic_problems(20, "add,linear", "1", seed=0)
    assert D.pretrain_documents(probs, chat_frac=0.0) == [D.format_document(p) for p in probs]
    chat = [D.format_prompt(p["question"], "r1") + D.format_completion(p["solution"], p["final"], "r1") for p in probs]
    assert D.pretrain_documents(probs, chat_frac=1.0) == chat


def test_tokenizer_corpus_holds_every_template():
    p = D.synthetic_problems(1, "add", "1", seed=0)[0]
    assert list(D.tokenizer_corpus([p])) == [
        D.format_document(p),
        D.format_prompt(p["question"], "plain") + D.format_completion(p["solution"], p["final"], "plain"),
        D.format_prompt(p["question"], "r1") + D.format_completion(p["solution"], p["final"], "r1")]


def test_parse_data_spec_is_the_test_split_and_honours_exclude():  # D16, D17, T13
    cfg = D.DataConfig(families="add,sub", levels="1", n_train=50, n_test=30, seed=5)
    train, test = D.synthetic_splits(cfg)
    assert D.parse_data_spec("synthetic", 30, seed=5, levels="1", families="add,sub") == test
    excl = {p["question"] for p in test[:10]}
    got = D.parse_data_spec("synthetic", 30, seed=5, levels="1", families="add,sub", exclude=excl)
    assert len(got) == 30 and not excl & {p["question"] for p in got}
    assert [p for p in test if p["question"] not in excl] == got[:20]  # same stream, the excluded skipped


def test_synthetic_test_split_is_clean_under_flaw_p():
    clean = D.synthetic_splits(D.DataConfig(families="add,sub,mul", n_train=50, n_test=100))[1]
    train, test = D.synthetic_splits(D.DataConfig(families="add,sub,mul", n_train=50, n_test=100, flaw_p=1.0))
    assert test == clean and all(p["final"] == p["answer"] for p in test)
    assert any(p["final"] != p["answer"] for p in train)


def test_quadratic_level_two_has_roots_of_both_signs():
    probs = D.synthetic_problems(100, "quadratic", "2", seed=0)
    roots = [int(r) for p in probs for r in p["answer"].split(", ")]
    assert min(roots) < 0 < max(roots)
    lvl1 = [int(r) for p in D.synthetic_problems(30, "quadratic", "1", seed=0) for r in p["answer"].split(", ")]
    assert all(1 <= r <= 9 for r in lvl1)
