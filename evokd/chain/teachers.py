"""What a stage's teachers may be. Its sequence-level KD teacher (``seqkd: {teacher: ...}``)
is any teacher ``evokd distill-data`` takes: a stage of the plan, a checkpoint file, a
CTranslate2 or Hugging Face model folder, or an OpenAI-compatible server URL; the other keys
of ``seqkd:`` are that kind of teacher's options (:func:`evokd.distill.any_teacher.options`,
written with ``-``), checked when the plan is loaded. Its word-level teacher (``teacher:``)
must be a fairseq checkpoint on the student's dictionaries: another is refused before any
training (:meth:`evokd.chain.stage.StageTrainer.check_models`).

This module does not import :mod:`evokd.chain.plan`, which checks plans with it.
"""

from evokd.distill.any_teacher import options
from evokd.errors import EvokdError
from evokd.teachers.text import ACCEPTED, teacher_kind


def kind(ref, stage_names=()):
    """``fairseq`` for a stage of the plan or a checkpoint file, else the kind of teacher
    ``ref`` holds (:func:`evokd.teachers.text.teacher_kind`); None for a path that holds no
    teacher (yet)."""
    if ref in stage_names:
        return "fairseq"
    try:
        return teacher_kind(ref)
    except EvokdError:
        return None


def is_text_teacher(ref):
    """Whether ``ref`` is a teacher with its own vocabulary (a model folder, a server URL)."""
    return kind(ref) not in (None, "fairseq")


def spell(option):
    """An option as a plan writes it (``teacher_model`` -> ``teacher-model``)."""
    return option.replace("_", "-")


def check_seqkd(where, stage, stage_names):
    """The keys of ``stage.seqkd``: ``teacher`` and the options of its teacher's kind (a
    teacher that is not there yet may have those of any kind: :func:`check_reference` names
    it when the plan is validated)."""
    if not stage.seqkd:
        return
    found = kind(stage.seqkd["teacher"], stage_names)
    kinds = [found] if found else ["fairseq", "ctranslate2"]
    allowed = ["teacher"] + list(dict.fromkeys(spell(o) for k in kinds for o in options(k)))
    unknown = sorted(set(stage.seqkd) - set(allowed))
    if unknown:
        teacher = f" for a {found} teacher" if found else ""
        raise EvokdError(
            f"{where}: seqkd: unknown keys {unknown} (allowed{teacher}: {', '.join(allowed)})"
        )


def seqkd_options(stage):
    """The options of the stage's ``seqkd:`` as :func:`evokd.distill.any_teacher.distill_any`
    takes them."""
    return {k.replace("-", "_"): v for k, v in stage.seqkd.items() if k != "teacher"}


def check_reference(where, key, ref, stage_names):
    """A reference that is neither a stage nor a file: a teacher with its own vocabulary is
    one for ``teacher`` and ``seqkd teacher`` (a word-level one is refused later, with its
    vocabulary), never for ``init_from``."""
    if key != "init_from" and is_text_teacher(ref):
        return
    what = "a checkpoint file" if key == "init_from" else ACCEPTED
    raise EvokdError(
        f"{where}: {key} {ref!r} is neither a stage of this plan ({', '.join(stage_names)}) "
        f"nor {what}"
    )
