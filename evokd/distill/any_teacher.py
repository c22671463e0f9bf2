"""Sequence-level KD data from any teacher, in one call: the kind of teacher
(:func:`evokd.teachers.text.teacher_kind`) chooses the path. A fairseq checkpoint translates
through :func:`evokd.distill.seqkd.distill_data`; a CTranslate2 or Hugging Face model folder
or a server URL through text (:func:`evokd.distill.text.distill_text`), with the settings
:func:`text_settings` builds over ``evokd distill-data``'s defaults. :func:`options` names
what each kind takes (the keyword names, ``distill-data``'s flags with ``_`` for ``-``).
"""

from evokd.core.decoding import DECODING
from evokd.errors import EvokdError

COMMON = ("beam", "max_len_a", "max_len_b", "keep_references", "chunk_size")
FAIRSEQ = ("lenpen", "max_tokens", "processes", "engine", "ct2_quantization", "loop_fallback")
# the text path's own options: each with the TeacherSettings field it sets
SETTINGS = {
    "batch_size": "batch_size", "teacher_model": "model", "teacher_tokenizer": "tokenizer",
    "prompt": "prompt", "teacher_api": "api", "concurrency": "concurrency",
    "timeout": "timeout", "retries": "retries",
}  # fmt: skip
TEXT_OUTPUT = ("on_bad_output", "source_text")


def options(kind):
    """The options a teacher of ``kind`` takes (``fairseq``, or a text teacher's kind)."""
    if kind == "fairseq":
        return COMMON + FAIRSEQ
    return COMMON + tuple(SETTINGS) + TEXT_OUTPUT


def check_options(kind, given, where, spell=str):
    """Refuse options a ``kind`` of teacher does not take, naming them (as ``spell`` writes a
    name) and those it takes."""
    unknown = sorted(set(given) - set(options(kind)))
    if unknown:
        allowed = ", ".join(spell(k) for k in options(kind))
        raise EvokdError(
            f"{where}: {', '.join(spell(k) for k in unknown)}: not an option of a {kind} "
            f"teacher (allowed: {allowed})"
        )


def device(cpu):
    """The text teacher's device: the GPU when there is one, unless ``cpu``."""
    if cpu:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def text_settings(data, cpu=False, **given):
    """The :class:`evokd.teachers.text.TeacherSettings` of a text teacher translating the
    prepared folder ``data`` (its language pair): ``given`` (:data:`SETTINGS`, ``beam``,
    ``max_len_a``, ``max_len_b``) over fairseq-generate's beam and length cap."""
    from evokd.data.layout import read_metadata
    from evokd.teachers.text import TeacherSettings

    metadata = read_metadata(data)
    decoding = {k: given.get(k, DECODING[k]) for k in ("beam", "max_len_a", "max_len_b")}
    fields = {SETTINGS[k]: v for k, v in given.items() if k in SETTINGS}
    return TeacherSettings(
        src_lang=metadata["src"], tgt_lang=metadata["tgt"], device=device(cpu), **decoding,
        **fields,
    )  # fmt: skip


def distill_any(teacher, data, out, subset="train", cpu=False, where="distill-data", **given):
    """Translate ``subset`` of ``data`` with ``teacher`` (a checkpoint, a model folder or a
    server URL) into the new dataset ``out``, through the path of its kind, with the options
    ``given`` (:func:`options`; others are refused, the error starting with ``where``).
    Returns the content of ``out/distill.json``, with ``done`` when it was finished before."""
    from evokd.teachers.text import teacher_kind

    kind = teacher_kind(teacher)
    check_options(kind, given, where)
    if kind == "fairseq":
        from .seqkd import distill_data

        return distill_data(str(teacher), data, out, subset=subset, cpu=cpu, **given)
    from .text import distill_text

    settings = text_settings(data, cpu, **given)
    rest = {k: v for k, v in given.items() if k in ("keep_references", "chunk_size", *TEXT_OUTPUT)}
    return distill_text(str(teacher), data, out, settings, subset=subset, **rest)
