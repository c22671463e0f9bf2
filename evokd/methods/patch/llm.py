"""The patcher LLM: its prompts, the strict reading of its replies, and the cached calls.

With an LLM teacher (a server URL or a Hugging Face causal-LM folder,
:func:`evokd.teachers.text.open_teacher`) the patch steps ask it, as MT-Patcher does
(Li et al., NAACL 2024), with the prompt files of ``prompts/`` (or of ``--prompts DIR``,
the same names):

- ``feedback.txt`` (``{src_lang}``, ``{tgt_lang}``, ``{source}``, ``{translation}``): the errors
  of the student's translation and a corrected translation, as
  ``{"errors": [{"source", "student", "correction"}], "translation"}``;
- ``synthesis.txt`` (``{word}``, ``{correction}``, ``{source}``): a new source sentence
  holding the error word, as ``{"sentence"}``;
- ``analogy.txt`` (``{word}``, ``{correction}``, ``{source}``, ``{k}``): words likely to
  cause the same kind of error, as ``{"category": [...], "semantic": [...]}``;
- ``context.txt`` (``{word}``): a source sentence holding an analogy word, as
  ``{"sentence"}``.

A reply must be exactly one JSON object with exactly the stated fields (a surrounding
Markdown code fence is allowed, nothing else); anything else (prose around it, truncated
JSON, a missing, extra or mistyped field, an error word that is not in the source) is
unparsed: counted, logged and skipped, never guessed at.
"""

import json
import logging
import re
from pathlib import Path

from evokd.errors import EvokdError
from evokd.teachers.engine import language_name

logger = logging.getLogger(__name__)

PROMPTS = Path(__file__).resolve().parent / "prompts"
FIELDS = {
    "feedback": ("{source}", "{translation}"),
    "synthesis": ("{word}", "{correction}", "{source}"),
    "analogy": ("{word}", "{correction}", "{source}", "{k}"),
    "context": ("{word}",),
}
FENCE = re.compile(r"\A```(?:json)?\s*\n(.*)\n\s*```\Z", re.DOTALL)


class Prompts:
    """The prompt templates: the shipped ones, each replaced by ``folder/NAME.txt`` when
    ``folder`` holds it."""

    def __init__(self, folder=None, src_lang="de", tgt_lang="en"):
        if folder is not None and not Path(folder).is_dir():
            raise EvokdError(f"--prompts {folder}: no such folder (prompt files: {names()})")
        self.templates, self.src_lang, self.tgt_lang = {}, src_lang, tgt_lang
        for name, fields in FIELDS.items():
            path = Path(folder) / f"{name}.txt" if folder else None
            if path is None or not path.is_file():
                path = PROMPTS / f"{name}.txt"
            template = path.read_text(encoding="utf-8").strip("\n")
            missing = [f for f in fields if f not in template]
            if missing:
                raise EvokdError(f"--prompts {path}: holds no {', '.join(missing)}")
            self.templates[name] = template

    def render(self, name, **values):
        """The prompt ``name`` with its fields filled (other braces stay as they are)."""
        text = self.templates[name]
        values = {"src_lang": language_name(self.src_lang),
                  "tgt_lang": language_name(self.tgt_lang), **values}  # fmt: skip
        for key, value in values.items():
            text = text.replace("{" + key + "}", str(value))
        return text


def names():
    return ", ".join(f"{name}.txt" for name in FIELDS)


# --- replies ----------------------------------------------------------------------------------


def read_object(reply, fields):
    """The JSON object of ``reply`` when it has exactly ``fields``, else None."""
    if reply is None:
        return None
    text = str(reply).strip()
    fenced = FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != set(fields):
        return None
    return value


def words(value):
    """``value`` as one line of words when it is a non-empty string, else None."""
    if not isinstance(value, str) or not value.strip() or "\n" in value.strip():
        return None
    return " ".join(value.split())


def parse_feedback(reply, source):
    """``{"errors": [{"source", "student", "correction"}], "translation"}`` from a feedback
    reply about ``source``, or None (see the module doc). An error's ``source`` must occur in
    ``source`` (case aside); ``student`` may be empty (a word left out)."""
    value = read_object(reply, ("errors", "translation"))
    if value is None or not isinstance(value["errors"], list):
        return None
    translation = words(value["translation"])
    if translation is None:
        return None
    errors, text = [], f" {' '.join(source.lower().split())} "
    for error in value["errors"]:
        if not isinstance(error, dict) or set(error) != {"source", "student", "correction"}:
            return None
        word, correction = words(error["source"]), words(error["correction"])
        if word is None or correction is None or not isinstance(error["student"], str):
            return None
        if f" {word.lower()} " not in text:
            return None
        errors.append({"source": word, "student": " ".join(error["student"].split()),
                       "correction": correction})  # fmt: skip
    return {"errors": errors, "translation": translation}


def parse_sentence(reply):
    """The sentence of a ``{"sentence": "..."}`` reply (synthesis, context), or None."""
    value = read_object(reply, ("sentence",))
    return None if value is None else words(value["sentence"])


def parse_analogy(reply, word, k):
    """``{"category": [...], "semantic": [...]}`` (at most ``k`` words each, ``word`` and
    repeats left out) from an analogy reply, or None."""
    value = read_object(reply, ("category", "semantic"))
    if value is None:
        return None
    out, seen = {}, {word.lower()}
    for kind in ("category", "semantic"):
        items = value[kind]
        if not isinstance(items, list) or not items:
            return None
        out[kind] = []
        for item in items:
            item = words(item)
            if item is None:
                return None
            if item.lower() not in seen and len(out[kind]) < k:
                seen.add(item.lower())
                out[kind].append(item)
    return out


# --- calls ------------------------------------------------------------------------------------


def open_llm(inputs, cfg, src, tgt, ws):
    """The LLM teacher of ``inputs["teacher"]``, its replies kept in ``cfg.reply_cache`` (default
    ``DIR/replies``)."""
    from evokd.core.inference import choose_device
    from evokd.teachers.text import TeacherSettings, open_teacher

    settings = TeacherSettings(
        src_lang=src,
        tgt_lang=tgt,
        beam=1,
        model=cfg.teacher_model,
        api=cfg.teacher_api,
        concurrency=cfg.concurrency,
        timeout=cfg.timeout,
        retries=cfg.retries,
        reply_cache=str(cfg.reply_cache or ws.replies),
        device=str(choose_device(cfg.cpu)),
        max_len_a=cfg.max_len_a,
        max_len_b=cfg.max_len_b,
    )
    return open_teacher(inputs["teacher"], settings)


def ask(teacher, prompts, parse, cfg, temperature=0.0, samples=1, what="reply"):
    """``parse(reply, i)`` for every sample of every prompt (``[[parsed or None, ...], ...]``)
    and the count of replies that failed to parse (each logged)."""
    replies = teacher.complete(prompts, cfg.llm_max_tokens, temperature, samples)
    return read_replies(replies, parse, what)


def read_replies(replies, parse, what):
    """``parse(reply, i)`` for every reply of ``replies`` (one list per prompt ``i``), and the
    count of those that failed (each logged)."""
    parsed, failed = [], 0
    for i, group in enumerate(replies):
        parsed.append([parse(reply, i) for reply in group])
        for reply, value in zip(group, parsed[-1]):
            if value is None:
                failed += 1
                logger.info("%s %d: unparseable, skipped: %r", what, i, str(reply)[:200])
    if failed:
        logger.warning("%d of %d %s replies could not be parsed: skipped", failed,
                       sum(map(len, replies)), what)  # fmt: skip
    return parsed, failed
