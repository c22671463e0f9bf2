"""What every text teacher shares: :class:`Translation`, :class:`TeacherSettings`, the
:class:`TextTeacher` base class, the prompt template and the strict reading of an LLM's reply.

The engines (:mod:`.ctranslate2`, :mod:`.huggingface`, :mod:`.server`) build on it;
:mod:`evokd.teachers.text` recognises a teacher and opens the right one.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from evokd.errors import EvokdError, check_number

PROMPT = Path(__file__).resolve().parent / "prompts" / "translate.txt"
FIELDS = ("{src_lang}", "{tgt_lang}", "{source}")
PROBLEMS = ("empty", "unparsed", "cut")
USAGE = ("calls", "cached", "seconds", "prompt_tokens", "completion_tokens")
LANGUAGES = {
    "ar": "Arabic", "cs": "Czech", "de": "German", "en": "English", "es": "Spanish",
    "fr": "French", "it": "Italian", "ja": "Japanese", "nl": "Dutch", "pl": "Polish",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "tr": "Turkish", "uk": "Ukrainian",
    "vi": "Vietnamese", "zh": "Chinese",
}  # fmt: skip


@dataclass
class Translation:
    """A teacher's output for one source sentence: ``text`` (raw, detokenized), the engine's
    ``score`` where it gives one (a log-probability), and ``problem`` when it is not usable
    (``empty``; ``unparsed``: an LLM reply that is not one translation; ``cut``: stopped by
    the length cap)."""

    text: str
    score: Optional[float] = None
    problem: Optional[str] = None


@dataclass(kw_only=True)
class TeacherSettings:
    """How a text teacher translates. ``max_len_a``/``max_len_b``: at most
    ``A x source words + B`` output tokens (the teacher's own tokens); ``batch_size``:
    sentences per call of the engine; ``model``: the served model's name (server);
    ``tokenizer``: a tokenizer folder or sentencepiece model (CTranslate2); ``prompt``: a
    prompt template file (LLMs); ``api``: ``chat`` or ``completions`` (server);
    ``concurrency``, ``timeout`` (seconds), ``retries``: server requests; ``reply_cache``:
    the folder where every server reply is kept (a rerun does not ask again)."""

    src_lang: str
    tgt_lang: str
    beam: int = 5
    max_len_a: float = 1.5
    max_len_b: int = 10
    batch_size: int = 16
    model: Optional[str] = None
    tokenizer: Optional[str] = None
    prompt: Optional[str] = None
    api: str = "chat"
    concurrency: int = 4
    timeout: float = 120.0
    retries: int = 3
    reply_cache: Optional[str] = None
    device: str = "cpu"

    def check(self):
        check_number(self.beam, "--beam", 1)
        check_number(self.batch_size, "--batch-size", 1)
        check_number(self.concurrency, "--concurrency", 1)
        check_number(self.retries, "--retries", 0)
        check_number(self.max_len_a, "--max-len-a", 0, float)
        check_number(self.max_len_b, "--max-len-b", 1)
        if self.api not in ("chat", "completions"):
            raise EvokdError(f"--teacher-api {self.api}: expected chat or completions")

    def max_tokens(self, source):
        """The length cap of one output, in the teacher's tokens."""
        return int(self.max_len_a * len(source.split()) + self.max_len_b)


class TextTeacher:
    """A teacher that translates raw sentences. Subclasses set ``kind`` and implement
    :meth:`translate_batch`; :meth:`describe` is what an output built with it records (and is
    checked on when resumed)."""

    kind = "text"

    def __init__(self, path, settings):
        self.path = str(path)
        self.settings = settings

    def translate(self, sources):
        """One :class:`Translation` per sentence of ``sources``, in order, in batches of
        ``settings.batch_size``."""
        out, size = [], self.settings.batch_size
        for start in range(0, len(sources), size):
            batch = list(sources[start : start + size])
            try:
                result = self.translate_batch(batch)
            except RuntimeError as exc:  # an engine's own limits (positions, memory)
                raise EvokdError(
                    f"--teacher {self.path}: the {self.kind} teacher failed: {exc}"
                ) from exc
            if len(result) != len(batch):  # never let an engine shift the pairs
                raise EvokdError(
                    f"{self.path}: the {self.kind} teacher gave {len(result)} translations "
                    f"for {len(batch)} sentences"
                )
            out += result
        return out

    def translate_batch(self, sources):
        raise NotImplementedError

    def complete(self, prompts, max_tokens, temperature=0.0, samples=1):
        """The LLM's raw replies to ``prompts`` (any task, not only translation): one list of
        ``samples`` replies (str, or None when the answer held no text) per prompt, in order.
        Greedy when ``temperature`` is 0; each sample is its own cached call. What the calls
        cost is added to :attr:`usage`. Only LLM teachers (server, causal LM) have it."""
        raise EvokdError(f"--teacher {self.path}: a {self.kind} teacher is not an LLM")

    @property
    def usage(self):
        """What the LLM calls cost so far: ``calls`` sent, ``cached`` (answered from the reply
        cache), ``seconds`` spent in calls, and ``prompt_tokens``/``completion_tokens`` where
        the engine says."""
        if not hasattr(self, "_usage"):
            self._usage = dict.fromkeys(USAGE, 0)
        return self._usage

    def describe(self):
        """JSON-able identity and settings: kind, path, content digest, decoding."""
        settings = asdict(self.settings)
        for key in ("concurrency", "timeout", "retries", "reply_cache", "device", "batch_size"):
            settings.pop(key)  # how, not what, is computed
        if settings.get("prompt"):
            settings["prompt_sha256"] = hashlib.sha256(self.prompt().encode()).hexdigest()
        return {"kind": self.kind, "path": self.path, "sha256": self.digest(), **settings}

    def digest(self):
        return folder_digest(self.path)

    def prompt(self):
        return load_prompt(self.settings.prompt)

    def ask(self, source):
        """The prompt for ``source``."""
        return render_prompt(self.prompt(), self.settings.src_lang, self.settings.tgt_lang, source)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def folder_digest(path):
    """sha256 over the files of a model folder (names and contents; subfolders skipped), of
    a file, or of a URL's text: what decides a teacher's output."""
    from evokd.files import file_digest

    path = Path(path)
    if str(path).startswith(("http:", "https:")) or not path.exists():
        return hashlib.sha256(str(path).encode()).hexdigest()
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(item.name.encode())
        digest.update(file_digest(item).encode())
    return digest.hexdigest()


# --- prompts and replies --------------------------------------------------------------------


def load_prompt(path=None):
    """The prompt template in ``path`` (default: the shipped ``prompts/translate.txt``); it
    must hold ``{source}``."""
    path = Path(path) if path else PROMPT
    if not path.is_file():
        raise EvokdError(f"--prompt {path}: no such file (a template with {', '.join(FIELDS)})")
    template = path.read_text(encoding="utf-8")
    if "{source}" not in template:
        raise EvokdError(f"--prompt {path}: holds no {{source}} (fields: {', '.join(FIELDS)})")
    return template.strip("\n")


def language_name(code):
    return LANGUAGES.get(code, code)


def render_prompt(template, src_lang, tgt_lang, source):
    """``template`` with its fields filled; other braces stay as they are."""
    for key, value in (("{src_lang}", language_name(src_lang)),
                       ("{tgt_lang}", language_name(tgt_lang))):  # fmt: skip
        template = template.replace(key, value)
    return template.replace("{source}", source)


def parse_reply(reply):
    """The translation in an LLM's ``reply``, or None when it is not exactly one: after
    stripping white space and one pair of enclosing quotes, it must be one non-empty line
    without the prompt's fields."""
    if reply is None:
        return None
    text = str(reply).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    if not text or "\n" in text or "\r" in text or any(f in text for f in FIELDS):
        return None
    return text


def reply_translation(reply, cut=False, score=None):
    """A :class:`Translation` from an LLM's raw ``reply`` (cut: stopped by the cap)."""
    text = parse_reply(reply)
    if text is None:
        problem = "empty" if reply is None or not str(reply).strip() else "unparsed"
        return Translation("", score, "cut" if cut and problem == "unparsed" else problem)
    return Translation(text, score, "cut" if cut else None)


def engine_translation(text, cut=False, score=None):
    """A :class:`Translation` from a translation engine's detokenized ``text``."""
    text = " ".join(text.split())
    problem = "empty" if not text else ("cut" if cut else None)
    return Translation(text, score, problem)


def reply_cache_path(folder, key):
    """Where the reply to the request ``key`` (a JSON-able dict: model, prompt, settings) is
    kept in the reply cache ``folder`` (None: no cache): ``FOLDER/ab/abcd....json``, by the
    sha256 of the key."""
    if not folder:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(folder) / digest[:2] / f"{digest}.json"


def api_key():
    """The server's API key: ``EVOKD_TEACHER_API_KEY``, else ``OPENAI_API_KEY``, else none."""
    return os.environ.get("EVOKD_TEACHER_API_KEY") or os.environ.get("OPENAI_API_KEY")
