"""
Config loading for r1-mini: a dataclass tree (one dataclass per section), a TOML file, and dotted CLI overrides.

    python train.py --config configs/NAME.toml --train.lr=1e-3 --grpo.beta 0.0 --init ckpt/

TOML values must already have the field's type (an int is accepted for a float); CLI values are strings, parsed
into the field's type. An unknown key or a value of the wrong type raises, naming the key and the valid ones.
A field typed `dict` holds a free-form table (the pipeline's steps), checked when it is applied; since it merges the
TOML's values with the command line's strings, its values are parsed like CLI strings ("5" is read as an int 5).
"""

import dataclasses
import tomllib


def _cast(value, typ, key, cli=False):
    """A TOML value (typed) or a CLI string (parsed) as `typ`, or a TypeError that names the key."""
    if cli and typ is not str and isinstance(value, str):
        low = value.strip().lower()
        try:
            if typ is bool:
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return low in ("true", "1", "yes")
            return typ(value)
        except ValueError:
            raise TypeError(f"{key}: cannot read {value!r} as {typ.__name__}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise TypeError(f"{key}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def apply_table(obj, updates, section, cli=False):
    """Set dataclass fields of `obj` from a dict; unknown keys are errors naming the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        name = f"[{section}].{key}" if section else key
        if key not in fields:
            raise KeyError(f"unknown key {name}; valid: {sorted(fields)}")
        f = fields[key]
        if f.type is dict:  # a free-form table (the pipeline's steps), merged and checked when it is used
            if not isinstance(value, dict):
                raise TypeError(f"{name}: expected a table, got {value!r}")
            setattr(obj, key, merge_tables(getattr(obj, key), value))
        elif dataclasses.is_dataclass(f.type):
            if not isinstance(value, dict):
                raise TypeError(f"{name}: expected a [{key}] section, got {value!r}")
            apply_table(getattr(obj, key), value, key, cli)
        else:
            setattr(obj, key, _cast(value, f.type, name, cli))
    if updates and hasattr(obj, "__post_init__"):  # the dataclass's own checks (ModelConfig's shapes), rerun
        try:
            obj.__post_init__()
        except ValueError as e:
            raise ValueError(f"[{section}]: {e}" if section else str(e)) from None


def check_rules(section, obj, rules):
    """Raise a ValueError naming the first (field, ok, what it must be) rule that obj breaks."""
    for name, ok, want in rules:
        if not ok:
            raise ValueError(f"[{section}].{name} = {getattr(obj, name)!r}: must be {want}")


def positive_int(value, key):
    """An integer >= 1 from a TOML int or a CLI string, or a ValueError naming the key."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key} = {value!r}: must be an integer >= 1")
    return value


def merge_tables(base, updates):
    """base's keys with updates' over them, nested tables merged key by key (neither is changed)."""
    out = dict(base)
    for k, v in updates.items():
        out[k] = merge_tables(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(args):
    """['--train.lr=1e-3', '--init', 'ckpt'] -> {'train': {'lr': '1e-3'}, 'init': 'ckpt'} (values as strings).
    A key given twice takes its last value (as argparse does); one given both a value and keys of its own
    (--train.lr=1 --train.lr.x=2) is an error."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, value = arg[2:], args[i + 1]
            i += 1
        else:
            raise ValueError(f"{arg} needs a value (--{arg[2:]}=VALUE)")
        node = out
        *parents, leaf = key.split(".")
        for depth, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--{key}: {'.'.join(parents[:depth + 1])} was given a value, so it has no keys")
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"--{key}: the command line also gives keys of {key} (--{key}.KEY=...)")
        node[leaf] = value
        i += 1
    return out


def load_config(cls, path=None, overrides=()):
    """A `cls` instance: dataclass defaults, then the TOML file, then CLI overrides."""
    cfg = cls()
    if path:
        with open(path, "rb") as f:
            try:
                toml = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: {e}") from None
        try:
            apply_table(cfg, toml, "")
        except (KeyError, TypeError, ValueError) as e:
            raise type(e)(f"{path}: {e.args[0]}") from None
    cli = parse_overrides(list(overrides))
    apply_table(cfg, cli, "", cli=True)
    cfg.cli_overrides = cli  # not a field: a pipeline re-applies the command line over each step's table
    return cfg
