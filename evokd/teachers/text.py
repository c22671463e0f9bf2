"""Teachers that translate text: one interface for every engine.

A teacher is any of (recognised from what ``path`` holds, :func:`teacher_kind`):

- ``fairseq``: a fairseq checkpoint file (``.pt``) on the student's dictionaries; it
  teaches at the word level (live or cached) and through ``evokd.distill.seqkd``, not here;
- ``ctranslate2``: a CTranslate2 model folder (``model.bin``) with the tokenizer it was
  converted with: ``source.spm``/``target.spm`` beside it, a Hugging Face tokenizer in it,
  or one given as ``tokenizer`` (:mod:`evokd.teachers.ctranslate2`);
- ``huggingface``: a Hugging Face model folder (``config.json``): a seq2seq translation model,
  or a causal LM asked with the prompt (:mod:`evokd.teachers.huggingface`);
- ``server``: the URL of an OpenAI-compatible server, ``http(s)://HOST:PORT/v1`` (vLLM,
  llama.cpp's server, ``transformers serve``, a hosted API), asked with the prompt for the
  model ``model`` (:mod:`evokd.teachers.server`).

:func:`open_teacher` gives a :class:`TextTeacher`: raw source sentences in, one
:class:`Translation` per sentence out, in the same order. A translation that is not usable
says why (``problem``: ``empty``, ``unparsed``, ``cut``) instead of being dropped, so that
the caller keeps every pair aligned and counts what failed.

LLMs are asked with a prompt template holding ``{src_lang}``, ``{tgt_lang}`` and
``{source}`` (the shipped ``prompts/translate.txt``, or a file given as ``prompt``); their
reply is untrusted input and read by :func:`parse_reply`.
"""

import json
from pathlib import Path

from evokd.errors import EvokdError

from .engine import (  # noqa: F401  (the interface, importable from here)
    FIELDS,
    PROBLEMS,
    PROMPT,
    TeacherSettings,
    TextTeacher,
    Translation,
    load_prompt,
    parse_reply,
    render_prompt,
    reply_translation,
)

KINDS = ("fairseq", "ctranslate2", "huggingface", "server")
ACCEPTED = (
    "a fairseq checkpoint (.pt), a CTranslate2 model folder (model.bin), a Hugging Face model "
    "folder (config.json) or an OpenAI-compatible server URL (http(s)://HOST:PORT/v1)"
)


def teacher_kind(path):
    """``fairseq``, ``ctranslate2``, ``huggingface`` or ``server`` for what ``path`` holds, or
    an error naming the path and the kinds accepted."""
    text = str(path)
    if text.startswith(("http://", "https://")):
        if not text.rstrip("/").endswith("/v1"):
            raise EvokdError(f"--teacher {text}: a server URL ends in /v1 (http(s)://HOST:PORT/v1)")
        return "server"
    path = Path(text)
    if path.is_file() or (path.suffix == ".pt" and not path.exists()):
        return "fairseq"  # any file, as before: the checkpoint loader names what is wrong
    if path.is_dir() and (path / "model.bin").is_file():
        return "ctranslate2"
    if path.is_dir() and (path / "config.json").is_file():
        return "huggingface"
    what = "no such file or folder" if not path.exists() else "not a teacher"
    raise EvokdError(f"--teacher {text}: {what}; expected {ACCEPTED}")


def open_teacher(path, settings):
    """The :class:`TextTeacher` for ``path`` (see the module doc). A fairseq checkpoint is not
    a text teacher here: it is read by ``evokd.distill.seqkd`` and the word-level task."""
    settings.check()
    kind = teacher_kind(path)
    if kind == "ctranslate2":
        from .ctranslate2 import CTranslate2Teacher

        return CTranslate2Teacher(path, settings)
    if kind == "huggingface":
        from .huggingface import open_huggingface

        return open_huggingface(path, settings)
    if kind == "server":
        from .server import ServerTeacher

        return ServerTeacher(path, settings)
    raise EvokdError(
        f"--teacher {path}: a fairseq checkpoint translates through evokd.distill.seqkd, not "
        "as a text teacher"
    )


def check_word_level_teacher(teacher, data, src, tgt, flag="--teacher"):
    """Fail before training unless ``teacher`` can teach word-level KD on ``data``: a fairseq
    checkpoint trained with ``data``'s dictionaries. Any other teacher has its own vocabulary
    and teaches through text only (sequence-level KD: ``evokd distill-data``)."""
    from evokd.core.checkpoint import check_dictionaries, load_checkpoint
    from evokd.data.folder import dictionary_path, dictionary_size

    kind = teacher_kind(teacher)
    if kind == "fairseq":
        check_dictionaries(load_checkpoint(teacher, flag), teacher, data, src, tgt, flag)
        return
    sizes = ", ".join(
        f"{dictionary_path(data, lang)} ({dictionary_size(dictionary_path(data, lang))} entries)"
        for lang in (src, tgt)
        if dictionary_path(data, lang).is_file()
    )
    raise EvokdError(
        f"{flag} {teacher}: a {kind} teacher has its own vocabulary ({teacher_vocabulary(teacher)})"
        f", not the student's ({sizes or data}); word-level KD needs a fairseq checkpoint "
        "trained on the same dictionaries. Use it for sequence-level KD (evokd distill-data "
        "--teacher) instead"
    )


def teacher_vocabulary(teacher):
    """What a text teacher's vocabulary is, in words (for messages)."""
    if str(teacher).startswith(("http://", "https://")):
        return "a served model"
    for name in ("shared_vocabulary.json", "target_vocabulary.json", "vocab.json"):
        path = Path(teacher) / name
        if path.is_file():
            entries = json.loads(path.read_text(encoding="utf-8"))
            return f"{path}: {len(entries)} entries"
    for name in ("shared_vocabulary.txt", "target_vocabulary.txt", "tokenizer.json"):
        if (Path(teacher) / name).is_file():
            return str(Path(teacher) / name)
    return "unknown size"
