"""Where an MCKD run's first pseudo-labels (``DIR/labels/teacher``) come from.

- a fairseq checkpoint on DATA's dictionaries: :func:`evokd.distill.seqkd.distill_data`,
  called by :mod:`evokd.methods.mckd.relabel` (every label of DATA, in DATA's order);
- a teacher with its own vocabulary (a CTranslate2 or Hugging Face model folder, an
  OpenAI-compatible server URL: :func:`evokd.teachers.text.teacher_kind`):
  :func:`evokd.distill.text.distill_text`, the text bridge of ``evokd distill-data``, on the
  raw training source of a folder made by ``evokd prepare``;
- a labels file (``--labels FILE``): raw (detokenized) target sentences, one per training
  pair of DATA in order, made anywhere. Its lines are taken as a text teacher's output
  (white space normalised) and go through the same bridge
  (:func:`evokd.distill.text.write_output`): the folder's tokenizer, lowercasing, BPE and
  dictionary. An empty line is a bad output.

Through the bridge, a bad output's pair is dropped (``on_bad_output="drop"``) or keeps its
reference (``"reference"``); never shifted. The pairs that have labels are the run's pool:
``labels/teacher/text/train.distilled.ids`` holds their ids in DATA (every id, in order,
for a fairseq teacher), and the halves, the merged folder and the label scores are over the
pool. What the labels were made from is recorded in ``mckd_settings.json``: the teacher's
path (or URL and model) and content digest, or the file's path and sha256, with the
settings that change the labels; a rerun with other labels is refused, naming them.
"""

import os
import shutil
import time
from dataclasses import fields

from evokd import files
from evokd.distill.text import POLICIES
from evokd.errors import EvokdError
from evokd.teachers.text import TeacherSettings

FILE = "file"
# what a text teacher is asked with, besides --beam and --max-len-a/-b: recorded
RECORDED = ("model", "tokenizer", "prompt", "api", "batch_size", "source_text")
TEXT_ONLY = ("model", "tokenizer", "prompt", "source_text")  # flags of text teachers only
PATHS = ("tokenizer", "prompt", "source_text")  # recorded with their digest
FLAGS = {"model": "--teacher-model", "tokenizer": "--teacher-tokenizer", "prompt": "--prompt",
         "source_text": "--source-text", "api": "--teacher-api", "batch_size": "--batch-size",
         "concurrency": "--concurrency", "timeout": "--timeout", "retries": "--retries",
         "on_bad_output": "--on-bad-output"}  # fmt: skip
# evokd distill-data's defaults: the teachers' own, and the first policy of the bridge
DEFAULTS = {f.name: f.default for f in fields(TeacherSettings) if f.name in FLAGS}
DEFAULTS["on_bad_output"] = POLICIES[0]


def options_of(given):
    """``given`` (text-teacher options by the names of :data:`FLAGS`) with the defaults of
    ``evokd distill-data`` for those not given; an unknown name is an error."""
    unknown = set(given or {}) - set(FLAGS)
    if unknown:
        raise EvokdError(f"mckd: unknown teacher options {sorted(unknown)} (known: {list(FLAGS)})")
    options = {**dict.fromkeys(FLAGS), **DEFAULTS}
    options.update({k: v for k, v in (given or {}).items() if v is not None})
    return options


def check_labels(path, n):
    """The number of lines of the labels file ``path``: it must be UTF-8 text with one line
    per training pair (``n``)."""
    from evokd.data.textio import count_lines

    if not os.path.isfile(path):
        raise EvokdError(f"--labels {path}: no such file (expected one target sentence per line)")
    count = count_lines(path)
    if count != n:
        raise EvokdError(
            f"--labels {path}: {count} lines, but the training set of --data has {n} pairs; "
            "give one raw target sentence per training pair, in order (an empty line for a "
            "pair without a label)"
        )
    return count


def check_one(teacher, labels):
    """Exactly one of ``teacher`` and ``labels``."""
    if (teacher is None) == (labels is None):
        raise EvokdError(
            "--teacher and --labels: give exactly one (a teacher that makes the first "
            "pseudo-labels, or a file holding them)"
        )


def describe(teacher, labels, data, decoding, options):
    """Check where the first labels come from before any work: ``(src, tgt, record)``, the
    languages and what ``mckd_settings.json`` records about the labels (see the module doc).
    ``decoding``: beam, max_len_a and max_len_b; ``options``: :func:`options_of`."""
    from evokd.core.checkpoint import check_exists, languages, load_checkpoint
    from evokd.teachers.text import teacher_kind

    check_one(teacher, labels)
    kind = FILE if labels is not None else teacher_kind(teacher)
    if kind in ("fairseq", FILE):
        given = [FLAGS[k] for k in TEXT_ONLY if options[k] is not None]
        if given:
            what = "a teacher, not with --labels"
            if kind == "fairseq":
                what = "teachers that are not fairseq checkpoints"
            raise EvokdError(f"{', '.join(given)}: only for {what}")
    if kind == "fairseq":
        check_exists(str(teacher), "--teacher")
        src, tgt = languages(load_checkpoint(str(teacher), "--teacher"), data)
        return src, tgt, {"teacher": os.path.abspath(teacher),
                          "teacher_sha256": files.file_digest(teacher)}  # fmt: skip
    if options["on_bad_output"] not in POLICIES:
        raise EvokdError(
            f"--on-bad-output {options['on_bad_output']}: expected {' or '.join(POLICIES)}"
        )
    from evokd.data.folder import subset_size
    from evokd.data.layout import read_metadata

    metadata = read_metadata(data)  # the raw text and the BPE model of `evokd prepare`
    src, tgt = metadata["src"], metadata["tgt"]
    record = {"kind": kind, "on_bad_output": options["on_bad_output"]}
    if kind == FILE:
        check_labels(labels, subset_size(data, "train", src, tgt))
        record.update(path=os.path.abspath(labels), sha256=files.file_digest(labels))
        return src, tgt, {"first_labels": record}
    settings = teacher_settings(data, decoding, options)
    settings.check()
    if kind == "server" and not settings.model:
        raise EvokdError(f"--teacher {teacher}: a server teacher needs --teacher-model NAME")
    record["path"] = _path(teacher)
    if kind != "server":  # a served model's weights are not ours to read
        record["sha256"] = _digest(teacher)
    for key in RECORDED:
        record[key] = _path(options[key]) if key in PATHS else options[key]
        if key in PATHS and options[key]:
            record[f"{key}_sha256"] = _digest(options[key])
    return src, tgt, {"first_labels": record}


def _path(path):
    if path is None or str(path).startswith(("http://", "https://")):
        return path
    return os.path.abspath(path)


def _digest(path):
    """A teacher folder's, a file's or a URL's digest (what decides the output)."""
    from evokd.teachers.engine import folder_digest

    return folder_digest(path)


def teacher_settings(data, decoding, options, cpu=True):
    """The :class:`evokd.teachers.text.TeacherSettings` of a text teacher translating ``data``:
    ``evokd distill-data``'s (:func:`evokd.distill.any_teacher.text_settings`) from
    ``options``, keyed by TeacherSettings' own field names."""
    from evokd.distill.any_teacher import SETTINGS, text_settings

    given = {flag: options[field] for flag, field in SETTINGS.items()}
    beam = {k: decoding[k] for k in ("beam", "max_len_a", "max_len_b")}
    return text_settings(data, cpu=cpu, **beam, **given)


def make(run, out):
    """Write ``out`` (``labels/teacher``) from the text teacher or the labels file recorded in
    ``run.settings`` (a fairseq teacher is the relabelling's own step)."""
    s, record = run.settings, run.settings["first_labels"]
    if record["kind"] == FILE:
        return write_labels(record["path"], run.data, out, s, record["on_bad_output"])
    from evokd.distill.text import distill_text

    asked = {k: run.options[k] for k in ("concurrency", "timeout", "retries")}  # not recorded
    options = {**{k: record[k] for k in RECORDED}, **asked}
    settings = teacher_settings(run.data, s, options, cpu=not run.devices.cuda)
    return distill_text(
        record["path"], run.data, out, settings, on_bad_output=record["on_bad_output"],
        source_text=record["source_text"],
    )  # fmt: skip


def write_labels(path, data, out, settings, policy):
    """``out``: DATA with the lines of ``path`` as training targets, through the text bridge
    (laid out as ``evokd distill-data``'s output of a text teacher); complete or absent."""
    from evokd.data.textio import read_lines
    from evokd.distill.seqkd import META
    from evokd.distill.text import FORMAT, write_output
    from evokd.teachers.engine import engine_translation

    start = time.perf_counter()
    translations = [engine_translation(line) for line in read_lines(path)]
    partial = files.partial_path(out)
    if partial.exists():  # an interrupted write: cheap to redo
        shutil.rmtree(partial)
    info = {
        "format": FORMAT,
        "method": "pseudo-labels from a file, through the folder's own preparation",
        "labels": str(path),
        "labels_sha256": settings["first_labels"]["sha256"],
        "teacher": None,
        "data": str(data),
        "subset": "train",
        "source_lang": settings["source_lang"],
        "target_lang": settings["target_lang"],
        "pair": settings["pair"],
        "on_bad_output": policy,
        "keep_references": False,
        "source_examples": len(translations),
    }
    info = write_output(partial, data, info, translations)
    info["wall_seconds"] = round(time.perf_counter() - start, 2)
    files.write_json(partial / META, info)
    files.publish(partial, out)
    return info


def pool(settings, folder, info):
    """The pool: the ids in DATA of the pairs of ``folder`` (``labels/teacher``, whose
    ``distill.json`` is ``info``), in order, and :func:`summary`; at least two pairs."""
    from evokd.core.build import check_count

    n = info["examples"]
    if "first_labels" not in settings:  # a fairseq teacher labels every pair
        ids = list(range(n))
    else:
        path = folder / "text" / "train.distilled.ids"
        ids = [int(i) for i in path.read_text(encoding="utf-8").split()]
        check_count(f"mckd: {path}", len(ids), n, "ids")
    source = summary(settings, info)
    if n < 2:
        raise EvokdError(f"mckd: {folder}: {line(source)}; two halves need at least 2 pairs")
    return ids, source


def summary(settings, info):
    """Where the first labels came from, for the report: the recorded source and, from the
    labels' ``distill.json`` (``info``), the pairs kept and the bad outputs counted."""
    source = dict(settings.get("first_labels") or {})
    if not source:
        source = {"kind": "fairseq", "path": settings["teacher"],
                  "sha256": settings["teacher_sha256"]}  # fmt: skip
    source.update(pairs=info["examples"], of=info.get("source_examples", info["examples"]))
    if "counts" in info:
        source["counts"] = info["counts"]
    return source


def line(source):
    """``source`` (:func:`summary`) in words."""
    what = "labels file" if source["kind"] == FILE else f"{source['kind']} teacher"
    text = f"{what} {source['path']}"
    text += f", model {source['model']}" if source.get("model") else ""
    text += f" (sha256 {source['sha256'][:12]})" if source.get("sha256") else ""
    text += f"; {source['pairs']} of {source['of']} pairs labelled"
    counts = source.get("counts")
    if counts:
        bad = ", ".join(f"{counts[k]} {k}" for k in ("empty", "unparsed", "cut") if counts[k])
        if bad:
            kept = "pairs dropped" if source["on_bad_output"] == "drop" else "references kept"
            text += f"; bad outputs: {bad} ({kept})"
    return text
