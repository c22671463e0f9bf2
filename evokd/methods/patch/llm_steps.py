"""The patch steps with an LLM teacher (MT-Patcher, Li et al., NAACL 2024): feedback, selection
of the flagged sentences, synthesis and analogy. The prompts and the reading of the replies
are :mod:`.llm`'s; the build and train steps are the same as with a fairseq teacher.

- ``translate``: the student translates the pool (fairseq's beam search, chunked and
  resumable as with a fairseq teacher); the LLM reads each source and the student's
  translation (as the student reads them: tokenized, lowercased, BPE removed) and names the
  errors with their corrections, and a corrected translation (``feedback.txt``, greedy).
  Rows: ``id``, ``source``, ``student``, ``source_bpe``, ``student_bpe``, ``parsed`` (the
  reply was read), ``errors`` (``[{source, student, correction}]``), ``correction`` (the LLM's
  translation, raw), ``teacher``/``teacher_bpe`` (that translation through DATA's own
  tokenizer, lowercasing and BPE; empty when unparsed).
- ``select``: every sentence whose reply was read and names at least one error (``--select``
  and ``--score`` rank a fairseq teacher's translations; here the LLM decides).
- ``synthesize``: for each (error word, correction) pair, ``--llm-samples`` new source
  sentences holding the word (``synthesis.txt``, temperature 1.0), translated by the teacher
  (its ``translate`` prompt); kept when the sentence holds the word and its translation is
  usable.
- ``analogy``: for each pair, ``--analogy-k`` words of the same category and ``--analogy-k``
  semantically related words (``analogy.txt``, greedy; ``analogy_words.json``), then
  ``--llm-samples`` sentences for each (``context.txt``, temperature 1.0), translated by the
  teacher; kept as in synthesis.

Every call is kept in the reply cache, so a killed step rerun pays only for the calls it had
not made, and a rerun pays nothing. Every reply that cannot be read is counted and skipped:
no row takes another row's text.
"""

import logging
import time

from evokd.data import load_encoder, remove_bpe
from evokd.files import write_json

from .chunks import build_jsonl, plan
from .llm import Prompts, ask, open_llm, parse_analogy, parse_feedback, parse_sentence
from .workspace import read_jsonl, write_jsonl

logger = logging.getLogger(__name__)


def usage_stats(teacher, start):
    usage = dict(teacher.usage)
    usage["seconds"] = round(usage["seconds"], 3)
    return {"llm": usage, "seconds": round(time.perf_counter() - start, 1)}


def student_rows(student, pool, batches):
    """``id``, ``source``, ``student``, ``source_bpe``, ``student_bpe`` for the sentences of
    ``batches``, in id order."""
    from evokd.core.inference import translate

    tgt_dict = student.task.target_dictionary
    hypos = {h.id: h for h in translate(student, batches)}
    rows = []
    for i in sorted(hypos):
        source_bpe, student_bpe = pool.bpe(i), tgt_dict.string(hypos[i].body)
        rows.append({"id": i, "source": remove_bpe(source_bpe), "student": remove_bpe(student_bpe),
                     "source_bpe": source_bpe, "student_bpe": student_bpe})  # fmt: skip
    return rows


def run_feedback(ws, cfg, inputs, src, tgt):
    """Step ``translate`` with an LLM teacher: ``translations.jsonl``; returns counts."""
    from evokd.core.inference import choose_device

    from .pool import open_pool
    from .translate import load_translator

    start = time.perf_counter()
    pool = open_pool(ws, inputs, "pool", src, tgt)
    student = load_translator(inputs["student"], pool, cfg.decoding(), choose_device(cfg.cpu),
                              flag="--student")  # fmt: skip
    encoder, prompts = load_encoder(inputs["data"], tgt), Prompts(cfg.prompts, src, tgt)
    with open_llm(inputs, cfg, src, tgt, ws) as teacher:

        def compute(batches):
            rows = student_rows(student, pool, batches)
            asked = [prompts.render("feedback", source=r["source"], translation=r["student"])
                     for r in rows]  # fmt: skip
            read = lambda reply, i: parse_feedback(reply, rows[i]["source"])  # noqa: E731
            parsed, _ = ask(teacher, asked, read, cfg, what="feedback")
            for row, (value,) in zip(rows, parsed):
                row["parsed"] = value is not None
                row["errors"] = value["errors"] if value else []
                row["correction"] = value["translation"] if value else ""
                row["teacher_bpe"] = encoder(value["translation"]) if value else ""
                row["teacher"] = remove_bpe(row["teacher_bpe"])
            return rows

        chunks = plan(student, pool.ids(), cfg.max_tokens, cfg.chunk_size)
        rows = build_jsonl(ws.translations, chunks, cfg.chunk_size, compute, "feedback")
        stats = usage_stats(teacher, start)
    return {
        "pool": inputs["pool"] or f"{inputs['data']} (train)",
        "judged": len(rows),
        "skipped": len(pool) - len(rows),
        "unparsed": sum(not r["parsed"] for r in rows),
        "flagged": sum(bool(r["errors"]) for r in rows),
        "errors": sum(len(r["errors"]) for r in rows),
        **stats,
    }


def run_flagged(ws):
    """Step ``select`` with an LLM teacher: ``selected.jsonl``; returns counts."""
    rows = read_jsonl(ws.translations)
    selected = []
    for row in rows:
        if row["parsed"] and row["errors"] and row["teacher_bpe"].strip():
            selected.append({"origin": "selected", "rank": len(selected) + 1, **row})
    write_jsonl(ws.selected, selected)
    return {"judged": len(rows), "flagged": sum(bool(r["errors"]) for r in rows),
            "selected": len(selected)}  # fmt: skip


def error_pairs(selected):
    """The distinct (error word, correction) pairs, lowercased, with the first sentence each
    came from, in order."""
    pairs = {}
    for row in selected:
        for error in row["errors"]:
            key = (error["source"].lower(), error["correction"].lower())
            pairs.setdefault(key, row["source"])
    return [(word, correction, source) for (word, correction), source in pairs.items()]


def holds(sentence, word):
    return f" {word.lower()} " in f" {' '.join(sentence.lower().split())} "


def translated_rows(teacher, jobs, encoders, origin):
    """One row per job ``(sentence, fields)``: the sentence (encoded like DATA) and the
    teacher's translation of it; ``kept`` when the sentence holds its word and the translation
    is usable."""
    src_encoder, tgt_encoder = encoders
    translations = teacher.translate([sentence for sentence, _ in jobs]) if jobs else []
    rows = []
    for n, ((sentence, fields), out) in enumerate(zip(jobs, translations)):
        source_bpe = src_encoder(sentence)
        teacher_bpe = tgt_encoder(out.text) if out.problem is None else ""
        rows.append({
            "id": n, "origin": origin, "sentence": sentence, "source": remove_bpe(source_bpe),
            "teacher": remove_bpe(teacher_bpe), **fields, "problem": out.problem,
            "kept": bool(teacher_bpe.strip()) and holds(sentence, fields["words"][0]),
            "source_bpe": source_bpe, "teacher_bpe": teacher_bpe,
        })  # fmt: skip
    return rows


def sentence_jobs(parsed, keys, make_fields):
    """``[(sentence, fields)]``: the distinct parsed sentences, in order."""
    jobs, seen = [], set()
    for key, group in zip(keys, parsed):
        for sentence in group:
            if sentence is not None and sentence.lower() not in seen:
                seen.add(sentence.lower())
                jobs.append((sentence, make_fields(key)))
    return jobs


def run_llm_synthesize(ws, cfg, inputs, src, tgt):
    """Step ``synthesize`` with an LLM teacher: ``synthesis.jsonl``; returns counts."""
    start = time.perf_counter()
    pairs = error_pairs(read_jsonl(ws.selected))
    prompts = Prompts(cfg.prompts, src, tgt)
    encoders = (load_encoder(inputs["data"], src), load_encoder(inputs["data"], tgt))
    with open_llm(inputs, cfg, src, tgt, ws) as teacher:
        asked = [prompts.render("synthesis", word=w, correction=c, source=s) for w, c, s in pairs]
        parsed, failed = ask(teacher, asked, lambda reply, i: parse_sentence(reply), cfg, 1.0,
                             cfg.llm_samples, "synthesis")  # fmt: skip
        jobs = sentence_jobs(parsed, pairs, lambda p: {"words": [p[0]], "corrected": [p[1]]})
        rows = translated_rows(teacher, jobs, encoders, "synthesis")
        stats = usage_stats(teacher, start)
    write_jsonl(ws.synthesis, rows)
    return {"error_pairs": len(pairs), "replies": len(pairs) * cfg.llm_samples,
            "unparsed": failed, "written": len(rows), "kept": sum(r["kept"] for r in rows),
            **stats}  # fmt: skip


def run_llm_analogy(ws, cfg, inputs, src, tgt):
    """Step ``analogy`` with an LLM teacher: ``analogy_words.json``, ``analogy.jsonl``;
    returns counts."""
    start = time.perf_counter()
    pairs = error_pairs(read_jsonl(ws.selected))
    prompts = Prompts(cfg.prompts, src, tgt)
    encoders = (load_encoder(inputs["data"], src), load_encoder(inputs["data"], tgt))
    with open_llm(inputs, cfg, src, tgt, ws) as teacher:
        asked = [prompts.render("analogy", word=w, correction=c, source=s, k=cfg.analogy_k)
                 for w, c, s in pairs]  # fmt: skip
        found, failed = ask(teacher, asked, lambda reply, i: parse_analogy(reply, pairs[i][0],
                            cfg.analogy_k), cfg, what="analogy")  # fmt: skip
        related, table = {}, {}
        for (word, _, _), (value,) in zip(pairs, found):
            if value is not None:
                table[word] = value
                for item in value["category"] + value["semantic"]:
                    related.setdefault(item.lower(), word)
        write_json(ws.analogy_words, table)
        keys = list(related.items())
        asked = [prompts.render("context", word=item) for item, _ in keys]
        parsed, failed_contexts = ask(teacher, asked, lambda reply, i: parse_sentence(reply), cfg,
                                      1.0, cfg.llm_samples, "context")  # fmt: skip
        jobs = sentence_jobs(parsed, keys, lambda k: {"words": [k[0]], "related_to": [k[1]]})
        rows = translated_rows(teacher, jobs, encoders, "analogy")
        stats = usage_stats(teacher, start)
    write_jsonl(ws.analogy, rows)
    return {"error_pairs": len(pairs), "unparsed": failed, "words": len(keys),
            "context_replies": len(keys) * cfg.llm_samples, "unparsed_contexts": failed_contexts,
            "written": len(rows), "kept": sum(r["kept"] for r in rows), **stats}  # fmt: skip


def write_report(ws):
    """``DIR/report.json``: what the LLM did and cost, from the step records (each step's calls
    as counted by the run that finished it), and the student's BLEU before and after."""
    stats = {}
    for step in ("translate", "select", "synthesize", "analogy", "train"):
        record = ws.record(step)
        stats[step] = (record or {}).get("stats") or {}
    feedback, synthesis, analogy = stats["translate"], stats["synthesize"], stats["analogy"]
    calls = {}
    for step in ("translate", "synthesize", "analogy"):
        for key, value in stats[step].get("llm", {}).items():
            calls[key] = round(calls.get(key, 0) + value, 3)
    train = stats["train"]
    report = {
        "judged": feedback.get("judged"),
        "flagged": feedback.get("flagged"),
        "unparsed": {
            "feedback": feedback.get("unparsed"),
            "synthesis": synthesis.get("unparsed"),
            "analogy": analogy.get("unparsed"),
            "contexts": analogy.get("unparsed_contexts"),
        },
        "contexts": {"written": synthesis.get("written"), "kept": synthesis.get("kept")},
        "analogies": {
            "words": analogy.get("words"),
            "written": analogy.get("written"),
            "kept": analogy.get("kept"),
        },
        "calls": calls,
        "bleu": {
            "before": train.get("student", {}).get("bleu"),
            "after": train.get("patched", {}).get("bleu"),
        },
    }
    write_json(ws.report, report)
    return report
