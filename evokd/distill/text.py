"""Sequence-level KD data from a teacher with its own vocabulary, through text.

``evokd distill-data --teacher PATH|URL`` with a CTranslate2, Hugging Face or served teacher
(:mod:`evokd.teachers.text`) lands here. The teacher reads the raw (detokenized, cased) source
side of ``subset`` of a folder made by ``evokd prepare`` (:func:`raw_sources`); its raw
output goes through the folder's own preparation (Moses tokenizer, lowercasing, the
sentencepiece BPE model: :func:`evokd.data.load_encoder`) and is binarized with the
student's dictionary, like training text. The output folder is laid out as
:mod:`evokd.distill.seqkd`'s (``distill.json``, ``text/{subset}.distilled.{tgt}``) plus::

    OUT/text/{subset}.teacher.{tgt}     the teacher's raw output for every example, in
                                        dataset order (an empty line where it failed)
    OUT/text/{subset}.distilled.ids     the example id of each distilled pair

Counted in ``distill.json`` (``counts``): translations that were empty, replies that could not
be parsed as one translation, outputs cut by the length cap (``--max-len-a/--max-len-b``, in
the teacher's tokens), and the BPE pieces outside the student's dictionary (written as
``<unk>``, like fairseq-preprocess's "replaced"). An empty, unparsed or cut output is a bad
output, and ``on_bad_output`` says what becomes of its pair: ``drop`` (the pair leaves the
subset, source and target together) or ``reference`` (the pair keeps its reference target).
No output is ever paired with another example's source.

The translations are computed by :class:`evokd.core.build.ChunkedBuild` in ``OUT.partial``
(examples by source length in words, then id, in batches of ``batch_size`` sentences), so a
killed run resumes from its finished chunks; a served teacher's replies are also kept one
by one in ``OUT.partial/replies`` (or ``settings.reply_cache``), so a chunk cut short is not
paid for twice.
"""

import functools
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from evokd import files
from evokd.core.build import ChunkedBuild, cut, length_order, plan_chunks
from evokd.data.folder import data_digest, language_pair, load_side, write_subset
from evokd.errors import EvokdError
from evokd.teachers.text import PROBLEMS, Translation, open_teacher

from .seqkd import META, check_out

logger = logging.getLogger(__name__)

FORMAT = "evokd-distill-text/1"
POLICIES = ("drop", "reference")
ORDER = "source length in words, then id"
TRANSLATIONS = "translations.jsonl"


# --- the raw source side --------------------------------------------------------------------


def _normal(line):
    return " ".join(line.replace("|", "").split())


def raw_sources(data, subset, src, tgt, source_text=None):
    """The raw source sentences of ``subset``, in dataset order: ``source_text`` (a file, one
    line per example) if given, else ``text/{subset}.raw.{src}`` of the prepared folder, else
    (the training split, whose raw text ``evokd prepare`` does not keep) the corpus recorded
    in ``prepare.json`` read again: each tokenized training pair (``text/train.tok.*``) is
    matched, in order, with the first raw pair that tokenizes to it."""
    from evokd.data.layout import existing_text, read_metadata, text_path
    from evokd.data.textio import read_lines

    if source_text:
        if not Path(source_text).is_file():
            raise EvokdError(f"--source-text {source_text}: no such file")
        return [line.rstrip("\n") for line in read_lines(source_text)]
    raw = existing_text(data, subset, src, "raw")
    if raw is not None:
        return [line.rstrip("\n") for line in read_lines(raw)]
    metadata = read_metadata(data)
    if subset != "train" or "sources" not in metadata:
        raise EvokdError(
            f"--data {data}: no raw source text of {subset}; give it with --source-text FILE"
        )
    return _replay_training_sources(data, metadata, src, tgt, text_path)


def _replay_training_sources(data, metadata, src, tgt, text_path):
    from evokd.data.corpora import recorded_corpus
    from evokd.data.moses import Tokenizer
    from evokd.data.textio import read_lines

    sources = metadata["sources"].get("train")
    corpus, files = recorded_corpus(metadata.get("corpus", "text"), sources or [], src, tgt)
    if not sources or not all(Path(p).is_file() for p in files):
        raise EvokdError(
            f"--data {data}: the training text it was prepared from ({sources}) is not there; "
            "give the raw training sources with --source-text FILE"
        )
    lowercase = metadata.get("lowercase", True)
    tokenizers = [Tokenizer(lang, lowercase=lowercase) for lang in (src, tgt)]
    wanted = zip(read_lines(text_path(data, "train", src, "tok")),
                 read_lines(text_path(data, "train", tgt, "tok")))  # fmt: skip
    found, raw_pairs = [], corpus.pairs("train")
    for tok_src, tok_tgt in wanted:
        for raw_src, raw_tgt in raw_pairs:
            if _normal(tokenizers[0](raw_src)) == _normal(tok_src.rstrip("\n")) and _normal(
                tokenizers[1](raw_tgt)
            ) == _normal(tok_tgt.rstrip("\n")):
                found.append(" ".join(raw_src.split()))
                break
        else:
            raise EvokdError(
                f"--data {data}: its training pair {len(found) + 1} is not in {sources}; "
                "give the raw training sources with --source-text FILE"
            )
    return found


# --- the chunks -----------------------------------------------------------------------------


def plan(sources, batch_size, chunk_size):
    """Examples by source length in words, ties by id, in batches of ``batch_size``
    sentences, grouped into chunks of at most ``chunk_size`` examples."""
    order = length_order([len(line.split()) for line in sources])
    return plan_chunks(cut(order, batch_size), chunk_size)


def compute_chunk(teacher, sources, batches):
    """Translate ``batches``: the example ids, and the records :func:`write_chunk` saves."""
    records = []
    for batch in batches:
        for i, t in zip(batch, teacher.translate([sources[i] for i in batch])):
            records.append({"id": int(i), "text": t.text, "score": t.score, "problem": t.problem})
    return [r["id"] for r in records], records


def write_chunk(folder, records):
    with open(folder / TRANSLATIONS, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def read_chunks(folders, n_examples):
    """The :class:`Translation` of every example, in dataset order."""
    out = [None] * n_examples
    for folder in folders:
        with open(Path(folder) / TRANSLATIONS, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                out[r["id"]] = Translation(r["text"], r["score"], r["problem"])
    return out


# --- the output -----------------------------------------------------------------------------


def bridge(data, translations, references, tgt, tgt_dict, policy):
    """The distilled pairs: ``(example ids, target items, BPE'd lines, counts)``. A bad
    translation's pair is dropped or keeps its reference (``policy``)."""
    import torch

    from evokd.data.encode import load_encoder

    counts = {p: 0 for p in PROBLEMS}
    counts.update(dropped=0, references_kept=0, pieces=0, unk_pieces=0, sentences_with_unk=0)
    good = [i for i, t in enumerate(translations) if not t.problem]
    encoded = dict(
        zip(good, load_encoder(data, tgt).encode_lines(translations[i].text for i in good))
    )
    ids, items, lines = [], [], []
    for i, t in enumerate(translations):
        if t.problem is None and not encoded[i].strip():
            t.problem = "empty"  # nothing left after tokenization
        if t.problem:
            counts[t.problem] += 1
            if policy == "drop":
                counts["dropped"] += 1
                continue
            counts["references_kept"] += 1
            tokens = torch.as_tensor(np.asarray(references[i]), dtype=torch.long)
            line = tgt_dict.string(tokens)
        else:
            line = encoded[i]
            tokens = tgt_dict.encode_line(line, add_if_not_exist=False, append_eos=True).long()
            unk = int((tokens == tgt_dict.unk()).sum())
            counts["pieces"] += len(tokens) - 1
            counts["unk_pieces"] += unk
            counts["sentences_with_unk"] += int(unk > 0)
        ids.append(i)
        items.append(tokens)
        lines.append(line)
    return ids, items, lines, counts


def write_output(dest, data, info, translations):
    """The folder ``dest`` (see the module doc)."""
    from fairseq.data import Dictionary

    subset, pair = info["subset"], info["pair"]
    src, tgt = info["source_lang"], info["target_lang"]
    tgt_dict = Dictionary.load(str(Path(data) / f"dict.{tgt}.txt"))
    sources, references = (load_side(data, subset, pair, lang) for lang in (src, tgt))
    refs = [references[i] for i in range(len(references))]
    ids, items, lines, counts = bridge(
        data, translations, refs, tgt, tgt_dict, info["on_bad_output"]
    )
    if not ids and not info["keep_references"]:
        raise EvokdError(
            f"every one of the {len(translations)} outputs was bad ({counts}): nothing to train "
            "on; the translations are kept: rerun with --on-bad-output reference to keep the "
            "references, or with another teacher or length cap"
        )
    src_items = [sources[i] for i in ids]
    tgt_items = items
    if info["keep_references"]:
        src_items = [sources[i] for i in range(len(sources))] + src_items
        tgt_items = refs + items
    dest.mkdir(parents=True)
    write_subset(data, dest, subset, pair, {src: src_items, tgt: tgt_items})
    if (Path(data) / "text").is_dir():
        shutil.copytree(Path(data) / "text", dest / "text", dirs_exist_ok=True)
    text = dest / "text"
    text.mkdir(exist_ok=True)
    (text / f"{subset}.distilled.{tgt}").write_text("".join(f"{x}\n" for x in lines), "utf-8")
    (text / f"{subset}.distilled.ids").write_text("".join(f"{i}\n" for i in ids), "utf-8")
    raw = "".join(f"{'' if t.problem else t.text}\n" for t in translations)
    (text / f"{subset}.teacher.{tgt}").write_text(raw, "utf-8")
    info[files.PAYLOAD] = files.payload_digests(dest, skip=(META,))
    lengths = np.array([len(x) - 1 for x in items]) if items else np.zeros(1)
    info.update(
        examples=len(ids),
        training_pairs=len(tgt_items),
        counts=counts,
        hypothesis_avg_length=round(float(lengths.mean()), 3),
        reference_avg_length=round(float(np.mean([len(r) - 1 for r in refs] or [0])), 3),
    )
    files.write_json(dest / META, info)
    return info


def _finished(build, wanted):
    out = build.out
    if not (out / META).is_file():
        raise EvokdError(
            f"--out {out}: exists and is not a distilled dataset (no {META}); give a new folder"
        )
    info = files.read_json(out / META)
    recorded = {**info.get("fingerprint", {}), **{k: info.get(k) for k in ("on_bad_output",
                "keep_references")}}  # fmt: skip
    files.check_settings(
        f"--out {out}", recorded, wanted, "remove it to rebuild, or give another --out"
    )
    build.clean()
    from .seqkd import open_distilled

    return dict(open_distilled(out, "--out"), done=True)


def distill_text(teacher_path, data, out, settings, subset="train", on_bad_output="drop",
                 keep_references=False, chunk_size=2048, source_text=None):  # fmt: skip
    """Translate ``subset`` of the prepared folder ``data`` with the text teacher
    ``teacher_path`` (:class:`evokd.teachers.text.TeacherSettings` ``settings``) and write the
    distilled dataset ``out`` (see the module doc). Returns the content of ``distill.json``,
    with ``done`` when ``out`` was finished before with the same settings."""
    start = time.perf_counter()
    out, data = Path(out), str(data)
    if on_bad_output not in POLICIES:
        raise EvokdError(f"--on-bad-output {on_bad_output}: expected {' or '.join(POLICIES)}")
    if not Path(data).is_dir():
        raise EvokdError(f"--data {data}: no such folder (expected a folder made by evokd prepare)")
    check_out(data, out)
    src, tgt = settings.src_lang, settings.tgt_lang
    pair = language_pair(data, subset, src, tgt, flag="--data", shards=False)
    sources = raw_sources(data, subset, src, tgt, source_text)
    n = len(load_side(data, subset, pair, src))
    if len(sources) != n:
        raise EvokdError(
            f"--data {data}: {len(sources)} raw source sentences for the {n} pairs of {subset}"
        )
    if settings.reply_cache is None:
        settings.reply_cache = str(files.partial_path(out) / "replies")
    teacher = open_teacher(teacher_path, settings)  # checks the path, the server, the model
    fingerprint = {
        "teacher": teacher.describe(),
        "data_sha256": data_digest(data, subset, src, tgt),
        "sources_sha256": files.array_digest(np.frombuffer("\n".join(sources).encode(), np.uint8)),
        "subset": subset,
        "order": ORDER,
    }
    chunks = plan(sources, settings.batch_size, chunk_size)
    build = ChunkedBuild(out, chunks, fingerprint, chunk_size, write_chunk, "distillation")
    wanted = {**files.json_copy(fingerprint), "on_bad_output": on_bad_output,
              "keep_references": keep_references}  # fmt: skip
    if out.exists():
        return _finished(build, wanted)
    build.start()
    build.run(None, worker=functools.partial(compute_chunk, teacher, sources), desc="distilling")
    teacher.close()

    def merge(dest, folders):
        translations = read_chunks(folders, n)
        info = {
            "format": FORMAT,
            "method": "sequence-level knowledge distillation (Kim and Rush, 2016), through text",
            "fingerprint": fingerprint,
            "teacher": str(teacher_path),
            "data": data,
            "subset": subset,
            "source_lang": src,
            "target_lang": tgt,
            "pair": pair,
            "on_bad_output": on_bad_output,
            "keep_references": keep_references,
            "source_examples": n,
            "server_requests": getattr(teacher, "calls", None),
        }
        info = write_output(dest, data, info, translations)
        info["wall_seconds"] = round(time.perf_counter() - start, 1)
        files.write_json(dest / META, info)
        return info

    info = build.finish(merge)
    logger.info("%s: %d of %d pairs distilled (%s)", out, info["examples"], n, info["counts"])
    return info
