"""
Data for r1-mini: the tokenizer, synthetic math tasks with worked solutions, JSONL loaders for GSM8K- and
MATH-style files, the prompt templates, and batching (packed sequences for pretraining, prompt/completion
pairs with a completion-only loss mask for SFT).

Synthetic families (tasks.py; each seeded, deterministic, with a gold answer in a form reward.py compares):
    add, sub, mul   multi-digit arithmetic with a written-out carry / borrow scratchpad
    linear          "Solve 3x + 5 = 20."              answer "5"
    quadratic       "Solve: x^2 - 5x + 6 = 0"         answer "2, 3" (the set of integer roots)
    fraction        "Compute 1/3 + 1/4."              answer "\\frac{7}{12}"
`flaw_p` > 0 makes the carry/borrow scratchpads drop each carry with that probability, and the rest of the
solution follows the mistake (so the stated answer is wrong). The demo uses it: SFT learns the flaw from the
demonstrations, and a verifiable reward lets GRPO correct it. The gold `answer` is always the true one.
"""

import collections
import json
import math
import os
import random
from dataclasses import dataclass

import torch

from config import check_rules
from tasks import FAMILIES, make_problem, synthetic_problems, synthetic_splits  # noqa: F401 (re-exported)


@dataclass
class DataConfig:
    families: str = "add,sub,mul,linear,quadratic,fraction"  # comma list of synthetic families
    levels: str = "1,2"           # comma list of difficulty levels (1-3) drawn uniformly
    n_train: int = 20000          # synthetic training problems
    n_test: int = 500             # synthetic held-out problems (never share a question with train)
    seed: int = 1234              # data seed (separate from the training seed)
    flaw_p: float = 0.0           # prob. of dropping each carry/borrow in the demonstrations (0 = clean)
    template: str = "plain"       # "plain", "r1" (R1-Zero <think>/<answer>), or "chat": the tokenizer.json model's
                                  # own chat format ("qwen" ChatML or "deepseek-r1"), which may also be named
    train_file: str = ""          # JSONL file instead of synthetic training problems
    test_file: str = ""           # JSONL file instead of synthetic test problems
    format: str = "auto"          # JSONL layout: auto, gsm8k, math or generic
    question_field: str = "question"  # generic JSONL: field names
    answer_field: str = "answer"
    solution_field: str = ""      # generic JSONL: worked solution field ("" = none)
    tokenizer: str = ""           # folder or file of an existing tokenizer, ignored when init is set (the init
                                  # checkpoint's is used); "" = the distill teacher's, else one trained on the data
    vocab_size: int = 512         # size of a newly trained sentencepiece vocabulary
    seq_len: int = 256            # training sequence length (pretraining window / SFT max length)
    chat_frac: float = 0.0        # pretraining: share of documents written as R1-template chat transcripts

    def check(self):
        levels = [v.strip() for v in self.levels.split(",") if v.strip()]
        families = [v.strip() for v in self.families.split(",") if v.strip()]
        check_rules("data", self, [
            ("families", families and all(f in FAMILIES for f in families),
             f"a comma list of {', '.join(FAMILIES)} (at least one)"),
            ("levels", levels and all(v in ("1", "2", "3") for v in levels), "a comma list of 1, 2, 3"),
            # TEMPLATES is defined below; check() runs long after the module is read
            ("template", self.template in TEMPLATES + ("chat",), f"one of {', '.join(TEMPLATES)} or chat"),
            ("n_train", self.n_train >= 1, ">= 1"), ("n_test", self.n_test >= 0, ">= 0"),
            ("flaw_p", 0 <= self.flaw_p <= 1, "in [0, 1]"), ("chat_frac", 0 <= self.chat_frac <= 1, "in [0, 1]"),
            ("format", self.format in ("auto", "gsm8k", "math", "generic"), "auto, gsm8k, math or generic"),
            ("vocab_size", self.vocab_size >= 1, "at least 1"), ("seq_len", self.seq_len >= 2, "at least 2"),
            ("train_file", not self.train_file or os.path.isfile(self.train_file), "an existing JSONL file, or empty"),
            ("test_file", not self.test_file or os.path.isfile(self.test_file), "an existing JSONL file, or empty"),
            # only the synthetic add/sub/mul demonstrations have carries to drop
            ("flaw_p", not self.flaw_p or (not self.train_file and {"add", "sub", "mul"} & set(families)),
             "0 unless synthetic training problems of add, sub or mul are made (no train_file)")])


# -----------------------------------------------------------------------------
# Tokenizer

SPECIAL_TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed", "\\frac", "\n"]


def write_atomic(path, data):
    """Write bytes to path through a temp file in the same folder, so a crash never leaves half a file."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, path)


class Tokenizer:
    """A sentencepiece model: digits one per token, byte fallback, our template tags as single pieces."""

    def __init__(self, path):
        import sentencepiece as spm
        self.path = path  # where it came from, for messages only: the file may be gone by the time we save
        try:
            self.sp = spm.SentencePieceProcessor(model_file=path)
        except (RuntimeError, OSError) as e:  # sentencepiece's own messages do not always name the file
            raise ValueError(f"{path} is not a sentencepiece model (empty or damaged?): {e}") from None
        # we keep the model in memory: a resumed run loads it from a checkpoint that rotation later deletes
        self.model_bytes = self.sp.serialized_model_proto()
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eos_id
        self.stop_ids = [self.eos_id]  # the ids that end a sampled completion (generate's eos_id)

    def encode(self, text, bos=False, eos=False):
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids):
        """Text of ids; bos, eos and ids past the vocabulary (a padded embedding row a model sampled) give none."""
        return self.sp.decode([i for i in ids if i not in (self.bos_id, self.eos_id) and 0 <= i < self.vocab_size])

    def save(self, folder):
        write_atomic(os.path.join(folder, "tokenizer.model"), self.model_bytes)


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (Qwen2, DeepSeek), read with the optional `tokenizers` package.
    chat_template names the chat format the model was tuned on, recognised from its special tokens (we do not run
    the Jinja template of tokenizer_config.json): "qwen" (ChatML, <|im_start|>), "deepseek-r1" (<｜User｜>), or
    None. With ChatML an assistant turn ends with <|im_end|>, so that is eos_id (where SFT targets end), even where
    tokenizer_config.json names <|endoftext|> (the Qwen2.5 base models); sampling stops at either (stop_ids)."""

    def __init__(self, folder):
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as e:
            raise ImportError(f"{folder} ships only tokenizer.json: reading it needs the optional "
                              "package `tokenizers` (pip install tokenizers)") from e
        self.path = os.path.join(folder, "tokenizer.json")  # for messages only, as in Tokenizer
        # the bytes of the files we read, kept for save(): the folder may be a checkpoint that rotation deletes
        self.files = {}
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):  # what save() writes back
            if os.path.exists(os.path.join(folder, name)):
                with open(os.path.join(folder, name), "rb") as f:
                    self.files[name] = f.read()
        self.tk = _Tok.from_str(self.files["tokenizer.json"].decode("utf-8"))
        self.vocab_size = self.tk.get_vocab_size()
        special = json.loads(self.files["tokenizer_config.json"]) if "tokenizer_config.json" in self.files else {}
        own_eos = self._special_id(special, "eos_token")  # the tokenizer's own end of text
        self.bos_id, self.eos_id = self._special_id(special, "bos_token"), own_eos
        self.chat_template = None
        if self.tk.token_to_id("<|im_start|>") is not None and self.tk.token_to_id("<|im_end|>") is not None:
            self.chat_template = "qwen"
            self.eos_id = self.tk.token_to_id("<|im_end|>")
        elif self.tk.token_to_id("<｜User｜>") is not None and self.tk.token_to_id("<｜Assistant｜>") is not None:
            self.chat_template = "deepseek-r1"
            if self.eos_id is None:  # no tokenizer_config.json: the format's own end of turn
                self.eos_id = self.tk.token_to_id("<｜end▁of▁sentence｜>")
        if self.eos_id is None:  # SFT targets end with it, sampling stops at it, padding falls back to it
            raise ValueError(f"{folder}: no eos token: name one as eos_token in tokenizer_config.json")
        pad = self._special_id(special, "pad_token")
        self.pad_id = pad if pad is not None else self.eos_id
        # sampling stops at eos_id and at the tokenizer's own end of text (<|endoftext|> of the Qwen2.5 base models,
        # which they write at the end of a document even under a ChatML template)
        self.stop_ids = [self.eos_id] + ([own_eos] if own_eos is not None and own_eos != self.eos_id else [])

    def _special_id(self, special, name):
        t = special.get(name)  # a string, or a dict with 'content' in newer files
        t = t.get("content") if isinstance(t, dict) else t
        return self.tk.token_to_id(t) if t else None

    def encode(self, text, bos=False, eos=False):
        ids = self.tk.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids + \
               ([self.eos_id] if eos and self.eos_id is not None else [])

    def decode(self, ids):
        """Text of ids; special tokens and ids past the vocabulary (a padded embedding row a model sampled) give
        none."""
        return self.tk.decode([i for i in ids if 0 <= i < self.vocab_size], skip_special_tokens=True)

    def save(self, folder):
        for name, raw in self.files.items():
            write_atomic(os.path.join(folder, name), raw)


def train_tokenizer(texts, model_prefix, vocab_size=512):
    """Train a sentencepiece BPE model on `texts`; writes model_prefix + '.model' and returns a Tokenizer."""
    import sentencepiece as spm
    texts = list(texts)  # read twice when the first try fails
    try:
        _train_spm(spm, texts, model_prefix, vocab_size)
    except RuntimeError:  # more distinct characters than pieces: the rarest ones go to byte pieces instead
        n_chars = vocab_size - 4 - len(SPECIAL_TOKENS) - 256 - 16  # less unk/bos/eos/pad, specials, bytes, a margin
        counts = sorted(collections.Counter(c for t in texts for c in t).values(), reverse=True)
        # sentencepiece keeps the most frequent characters until they cover this share of the text (n_chars of
        # them), and takes no share below 0.98
        coverage = max(0.98, (sum(counts[:max(n_chars, 0)]) - 0.5) / sum(counts))
        try:
            _train_spm(spm, texts, model_prefix, vocab_size, character_coverage=coverage)
        except RuntimeError as e:
            raise ValueError(f"cannot train a tokenizer with data.vocab_size={vocab_size} on text of {len(counts)} "
                             f"distinct characters (besides them it needs 256 byte pieces and "
                             f"{4 + len(SPECIAL_TOKENS)} special ones): raise data.vocab_size ({e})") from None
    return Tokenizer(model_prefix + ".model")


def _train_spm(spm, texts, model_prefix, vocab_size, character_coverage=1.0):
    """character_coverage 1.0: every character of the corpus gets a piece; below it, the rarest characters are
    written as bytes (byte_fallback), which decode back to the same text."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=model_prefix, vocab_size=vocab_size, model_type="bpe",
        split_digits=True, byte_fallback=True, user_defined_symbols=SPECIAL_TOKENS,
        # identity normalization and no dummy prefix: decode(encode(text)) == text for ASCII math text
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        split_by_whitespace=True, character_coverage=character_coverage, max_sentence_length=1 << 16,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=2, minloglevel=2)


def load_tokenizer(path):
    """A tokenizer from a checkpoint folder (tokenizer.model, else tokenizer.json), a .model file, or a
    tokenizer.json file (read with the tokenizer_config.json beside it)."""
    if os.path.isfile(path):
        if path.endswith(".json"):
            if os.path.basename(path) != "tokenizer.json":
                raise ValueError(f"{path}: a Hugging Face tokenizer is read from a folder with tokenizer.json (and "
                                 "tokenizer_config.json); give that folder")
            return HFTokenizer(os.path.dirname(path) or ".")
        return Tokenizer(path)
    if os.path.exists(os.path.join(path, "tokenizer.model")):
        return Tokenizer(os.path.join(path, "tokenizer.model"))
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return HFTokenizer(path)
    raise FileNotFoundError(f"no tokenizer.model or tokenizer.json in {path}")


# -----------------------------------------------------------------------------
# JSONL loaders

def _read_jsonl(path):
    # bytes, decoded line by line, so that a non-UTF-8 byte is reported with its line
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not UTF-8 ({e.reason} at byte {e.start + 1} of the "
                                 "line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: malformed JSON ({e.msg})") from None
            except (ValueError, RecursionError) as e:  # a number of over 4300 digits, nesting too deep to parse
                raise ValueError(f"{path}, line {lineno}: unreadable JSON ({type(e).__name__}: "
                                 f"{str(e)[:100]})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def _need(row, key, path, lineno, number=False, empty=False):
    """row[key], a string (or with number=True an int or float, as a string; never a bool), not blank unless
    empty=True: a blank question or gold answer would be a dead row (an empty gold scores 0 for every answer)."""
    v = row.get(key)
    if v is None:
        raise ValueError(f"{path}, line {lineno}: missing string field {key!r} (has {sorted(row)})")
    if number and isinstance(v, (int, float)) and not isinstance(v, bool):
        if not math.isfinite(v):  # json reads NaN and Infinity: no gold answer a model could write
            raise ValueError(f"{path}, line {lineno}: {key!r} must be a finite number, got {v}")
        v = str(v)
    if not isinstance(v, str):
        want = "a string or a number" if number else "a string"
        raise ValueError(f"{path}, line {lineno}: {key!r} must be {want}, got {type(v).__name__} "
                         f"{json.dumps(v)[:40]}")
    if not empty and not v.strip():
        raise ValueError(f"{path}, line {lineno}: {key!r} is empty")
    try:
        v.encode("utf-8")  # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer can encode
    except UnicodeEncodeError as e:
        raise ValueError(f"{path}, line {lineno}: {key!r} holds {v[e.start]!r}, a lone surrogate (not valid "
                         "Unicode)") from None
    return v


def _lines(lines):
    """[2, 5, 9] -> 'line 2 and 2 other rows', [2] -> 'line 2'."""
    n = len(lines) - 1
    return f"line {lines[0]}" + (f" and {n} other row{'s' if n > 1 else ''}" if n else "")


def _row_kinds(path, rows):
    """format 'auto': each row's kind, decided per row: math if it has 'problem', gsm8k if its answer holds '####',
    else generic. Non-math rows of both gsm8k and generic kinds are an error, not two kinds: a GSM8K row missing
    its '#### x' would otherwise load as a generic row whose gold answer is the whole solution."""
    kinds = ["math" if "problem" in row else "gsm8k" if "####" in str(row.get("answer", "")) else "generic"
             for _, row in rows]
    gsm = [lineno for (lineno, _), k in zip(rows, kinds) if k == "gsm8k"]
    gen = [lineno for (lineno, _), k in zip(rows, kinds) if k == "generic"]
    if gsm and gen:  # name the first row of the minority kind (ties: the generic one)
        if len(gen) <= len(gsm):
            _need(dict(rows)[gen[0]], "answer", path, gen[0])  # a row with no answer at all: say that first
            raise ValueError(f"{path}, line {gen[0]}: GSM8K answer has no '#### x' final answer "
                             f"({_lines(gsm)} {'have' if len(gsm) > 1 else 'has'} one)")
        raise ValueError(f"{path}, line {gsm[0]}: answer holds a GSM8K '####' but {_lines(gen)} "
                         f"{'have' if len(gen) > 1 else 'has'} none (a generic file? set its format to generic)")
    return kinds


def load_jsonl(path, format="auto", question_field="question", answer_field="answer", solution_field=""):
    """Problems from a JSONL file as dicts with question, answer, solution (and subject/level when present).
    gsm8k: question + answer ending in '#### x'; math: problem + solution with \\boxed{} (+ optional answer);
    generic: the given field names. 'auto' decides per row: math if it has 'problem', gsm8k if its answer holds
    '####', else generic; so GSM8K and MATH rows may share a file, but GSM8K rows and generic rows may not (the
    odd one out is a GSM8K row missing its '#### x', or a generic answer holding '####': an error naming it).
    Every row needs a non-empty question and gold answer (a number counts as a gold answer, written as a string)."""
    if format not in ("auto", "gsm8k", "math", "generic"):
        raise ValueError(f"unknown JSONL format {format!r}; valid: auto, gsm8k, math, generic")
    rows = list(_read_jsonl(path))
    if not rows:
        raise ValueError(f"{path}: no problems in the file")
    kinds = _row_kinds(path, rows) if format == "auto" else [format] * len(rows)
    out = []
    for (lineno, row), fmt in zip(rows, kinds):
        if fmt == "gsm8k":
            text = _need(row, "answer", path, lineno)
            if "####" not in text:
                raise ValueError(f"{path}, line {lineno}: GSM8K answer has no '#### x' final answer")
            sol, ans = text.rsplit("####", 1)
            if not ans.strip():
                raise ValueError(f"{path}, line {lineno}: 'answer' has nothing after its '####'")
            p = {"question": _need(row, "question", path, lineno), "solution": sol.strip(), "answer": ans.strip()}
        elif fmt == "math":
            sol = _need(row, "solution", path, lineno, empty=True)
            if row.get("answer") is not None:
                ans = _need(row, "answer", path, lineno, number=True)
            else:
                from reward import extract_answer  # reward.py (with mathparse.py) owns parsing math strings
                ans = extract_answer(sol)
                if ans is None:
                    raise ValueError(f"{path}, line {lineno}: no 'answer' field and no \\boxed{{}} in the solution")
                if not ans.strip():
                    raise ValueError(f"{path}, line {lineno}: no 'answer' field and an empty \\boxed{{}} in 'solution'")
            p = {"question": _need(row, "problem", path, lineno), "solution": sol, "answer": ans}
            p.update({k: row[k] for k in ("subject", "level", "unique_id") if k in row})
        else:  # generic: numeric gold answers are common in generic files
            p = {"question": _need(row, question_field, path, lineno),
                 "answer": _need(row, answer_field, path, lineno, number=True),
                 "solution": _need(row, solution_field, path, lineno, empty=True) if solution_field else ""}
        out.append(p)
    return out


def load_problems(cfg, split):
    """The 'train' or 'test' problems the config names: a JSONL file when given, else the synthetic tasks."""
    path = cfg.train_file if split == "train" else cfg.test_file
    if path:
        return load_jsonl(path, cfg.format, cfg.question_field, cfg.answer_field, cfg.solution_field)
    if split == "test" and cfg.train_file:
        print(f"warning: data.train_file is set but not data.test_file: held-out evaluation uses synthetic problems "
              f"({cfg.families}); set data.test_file to evaluate on the file's kind of problem")
    train, test = synthetic_splits(cfg)
    return train if split == "train" else test


def parse_data_spec(spec, n_test=500, seed=1234, levels="1,2", families=None, exclude=frozenset()):
    """'synthetic', 'synthetic:FAMILY[,FAMILY]' or a JSONL path -> list of problems (eval.py's --data).
    A synthetic set is drawn as synthetic_splits draws its test split (families defaults to DataConfig's), never
    with a question in `exclude` (a checkpoint's training questions)."""
    if is_synthetic_spec(spec):
        fams = spec.split(":", 1)[1] if ":" in spec else families or DataConfig.families
        return synthetic_problems(n_test, fams, levels, seed=seed + 1, exclude=exclude)
    return load_jsonl(spec)


def is_synthetic_spec(spec):
    """'synthetic' or 'synthetic:FAMILY[,FAMILY]' names the generated tasks; anything else is a file path (a file
    called synthetic_gsm.jsonl too)."""
    return spec == "synthetic" or spec.startswith("synthetic:")


def check_data_spec(spec):
    """Why --data `spec` cannot be read (None when it can): an unknown or missing family, or no such file."""
    if is_synthetic_spec(spec):
        if ":" not in spec:
            return None
        fams = [f.strip() for f in spec.split(":", 1)[1].split(",") if f.strip()]
        unknown = [f for f in fams if f not in FAMILIES]
        if not fams or unknown:
            return (f"{spec!r} names {'unknown families ' + str(unknown) if unknown else 'no family'}; "
                    f"write synthetic or synthetic:FAMILY[,FAMILY] with families from {sorted(FAMILIES)}")
        return None
    if not os.path.isfile(spec):
        return f"no file {spec} (a JSONL file, or synthetic / synthetic:FAMILY[,FAMILY])"
    return None


# -----------------------------------------------------------------------------
# Templates: the prompt a model sees, and the completion it is trained to write. R1_PREAMBLE is DeepSeek-R1-Zero's
# layout plus a \boxed{} final answer inside <answer> (ours: the accuracy reward reads the box).

R1_PREAMBLE = ("A conversation between User and Assistant. The User asks a question and the Assistant solves it. "
               "The Assistant first thinks through the reasoning, then gives the answer. The reasoning goes inside "
               "<think> </think> and the answer inside <answer> </answer>, with the final answer in \\boxed{}.")


# the instruction Qwen2.5-Math's chat template puts in its system turn, and DeepSeek-R1's usage notes ask to add to
# the user turn for math
STEP_BY_STEP = "Please reason step by step, and put your final answer within \\boxed{}."
TEMPLATES = ("plain", "r1", "qwen", "deepseek-r1")


def format_prompt(question, template="plain"):
    if template == "plain":
        return f"Question: {question}\nAnswer:"
    if template == "r1":
        return f"{R1_PREAMBLE} User: {question} Assistant:"
    if template == "qwen":  # ChatML, as Qwen2.5-Math's tokenizer_config.json renders it with add_generation_prompt
        return (f"<|im_start|>system\n{STEP_BY_STEP}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
                "<|im_start|>assistant\n")
    if template == "deepseek-r1":  # DeepSeek-R1(-Distill)'s template; the model's bos comes from encode(bos=True)
        return f"<｜User｜>{question}\n{STEP_BY_STEP}<｜Assistant｜><think>\n"
    raise ValueError(f"unknown template {template!r}; valid: {', '.join(TEMPLATES)}, chat (from the tokenizer)")


def format_completion(solution, answer, template="plain"):
    """The demonstration a model is trained to write after format_prompt (the tokenizer adds eos after it)."""
    if template == "plain":
        return f"\n{solution}\nThe answer is \\boxed{{{answer}}}."
    if template == "r1":
        return f" <think>\n{solution}\n</think>\n<answer>\\boxed{{{answer}}}</answer>"
    if template == "qwen":
        return f"{solution}\nThe final answer is \\boxed{{{answer}}}."
    if template == "deepseek-r1":  # the prompt opened <think>
        return f"{solution}\n</think>\n\nThe final answer is \\boxed{{{answer}}}."
    raise ValueError(f"unknown template {template!r}; valid: {', '.join(TEMPLATES)}, chat (from the tokenizer)")


def resolve_template(template, tok):
    """The template a run uses: "chat" becomes the tokenizer's own chat format (HFTokenizer.chat_template)."""
    if template != "chat":
        return template
    name = getattr(tok, "chat_template", None)
    if name is None:
        raise ValueError("data.template = 'chat' needs a tokenizer.json with a known chat format (Qwen2 ChatML or "
                         f"DeepSeek-R1); this tokenizer has none: use one of {', '.join(TEMPLATES)}")
    return name


def format_document(p):
    """A pretraining document: the problem and its worked solution as plain text."""
    return f"Problem: {p['question']}\nSolution: {p['solution']}\nThe answer is \\boxed{{{shown_answer(p)}}}."


def pretrain_documents(problems, chat_frac=0.0, seed=0):
    """The pretraining corpus: each problem as a plain document, or with probability chat_frac as an R1-template
    chat transcript (prompt + <think>/<answer> completion), standing in for the chat text a web corpus holds, so
    that a base model has seen the tags R1-Zero's format reward asks for. Deterministic in seed."""
    rng = random.Random(seed)
    return [format_prompt(p["question"], "r1") + format_completion(p["solution"], shown_answer(p), "r1")
            if rng.random() < chat_frac else format_document(p) for p in problems]


def shown_answer(p):
    """The answer a demonstration boxes: the one its worked solution reaches (a flawed synthetic demonstration
    follows its dropped carry through to the end), else the gold answer."""
    return p.get("final", p["answer"])


def tokenizer_corpus(problems):
    """The text a new tokenizer is trained on: plain documents and plain / r1 transcripts, so the tags get their
    pieces (the chat templates need a checkpoint's own tokenizer)."""
    for p in problems:
        yield format_document(p)
        for t in ("plain", "r1"):
            yield format_prompt(p["question"], t) + format_completion(p["solution"], shown_answer(p), t)


# -----------------------------------------------------------------------------
# Batching

def pack_documents(tok, texts):
    """Pretraining stream: bos + doc + eos for every document, concatenated into one 1-D tensor."""
    ids = []
    for t in texts:
        ids.extend(tok.encode(t, bos=True, eos=True))
    return torch.tensor(ids, dtype=torch.long)


def packed_batch(stream, batch_size, seq_len, generator):
    """Random windows of the packed stream: x (B, T) and next-token targets y (B, T)."""
    if len(stream) < seq_len + 1:
        raise ValueError(f"the pretraining stream has {len(stream)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    # a window is seq_len + 1 tokens, so the last start is len - seq_len - 1 (randint's high is exclusive)
    starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=generator)  # (B,)
    idx = starts[:, None] + torch.arange(seq_len + 1)  # (B, T+1)
    chunk = stream[idx]
    return chunk[:, :-1], chunk[:, 1:]


def encode_sft(tok, problem, template, seq_len=None):
    """(prompt_ids, completion_ids): bos + prompt, and the worked completion + eos (what the loss sees)."""
    prompt = tok.encode(format_prompt(problem["question"], template), bos=True)
    completion = tok.encode(format_completion(problem["solution"], shown_answer(problem), template), eos=True)
    if seq_len is not None and len(prompt) + len(completion) > seq_len + 1:
        completion = completion[: max(0, seq_len + 1 - len(prompt))]  # truncate: the loss still masks the prompt
    return prompt, completion


def sft_batch(pairs, pad_id):
    """Right-padded inputs x (B, T), targets y (B, T) and loss mask (B, T) that is 1 exactly on the
    positions whose target is a completion token."""
    seqs = [p + c for p, c in pairs]
    T = max(len(s) for s in seqs) - 1
    x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.float32)
    for i, ((p, c), s) in enumerate(zip(pairs, seqs)):
        n = len(s) - 1
        x[i, :n] = torch.tensor(s[:-1])
        y[i, :n] = torch.tensor(s[1:])
        mask[i, len(p) - 1: n] = 1.0  # target at position t is s[t+1]: completion targets start at len(p)-1
    return x, y, mask
