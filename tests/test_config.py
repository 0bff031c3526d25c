"""config.py: how TOML files and command-line overrides become typed settings, and what is refused, named."""
import pytest

import config as C
import train as T


def test_cli_bools_in_every_spelling():
    for text, want in (("yes", True), ("no", False), ("1", True), ("0", False), (" True ", True), ("FALSE", False)):
        assert T.load_config(None, [f"--train.resume={text}"]).train.resume is want, text


def test_toml_int_for_a_float_and_bool_for_an_int(tmp_path):
    (tmp_path / "a.toml").write_text("[train]\nlr = 1\n")
    cfg = T.load_config(str(tmp_path / "a.toml"))
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    (tmp_path / "b.toml").write_text("[train]\nmax_steps = true\n")
    with pytest.raises(TypeError, match=r"\[train\]\.max_steps: expected int, got bool True"):
        T.load_config(str(tmp_path / "b.toml"))


def test_a_value_may_hold_an_equals_sign():
    assert C.parse_overrides(["--init=runs/a=b/final"]) == {"init": "runs/a=b/final"}


def test_toml_syntax_errors_name_the_file(tmp_path):
    (tmp_path / "bad.toml").write_text("[train\nlr = 1\n")
    with pytest.raises(ValueError, match=r"bad\.toml: .*line 1"):
        T.load_config(str(tmp_path / "bad.toml"))


def test_a_free_form_table_given_a_value_names_the_key():
    with pytest.raises(TypeError, match=r"pipeline: expected a table, got '5'"):
        T.load_config(None, ["--pipeline=5"])


def test_a_bare_argument_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unexpected argument 'configs/x\.toml'"):
        C.parse_overrides(["configs/x.toml"])


def test_a_toml_bool_is_not_a_float(tmp_path):
    # true is an int to Python: without the bool check `lr = true` would train at lr 1.0
    (tmp_path / "a.toml").write_text("[train]\nlr = true\n")
    with pytest.raises(TypeError, match=r"\[train\]\.lr: expected float, got bool True"):
        T.load_config(str(tmp_path / "a.toml"))


def test_a_section_given_a_value_names_the_section(tmp_path):
    with pytest.raises(TypeError, match=r"train: expected a \[train\] section, got '5'"):
        T.load_config(None, ["--train=5"])
    (tmp_path / "a.toml").write_text("train = 5\n")
    with pytest.raises(TypeError, match=r"a\.toml: train: expected a \[train\] section, got 5"):
        T.load_config(str(tmp_path / "a.toml"))


def test_a_last_override_without_a_value_is_named():
    with pytest.raises(ValueError, match=r"--train\.resume needs a value \(--train\.resume=VALUE\)"):
        C.parse_overrides(["--train.lr=1e-3", "--train.resume"])
