"""Demonstrations for fine-tuning a patcher LLM, collected as MT-Patcher collects them from a
strong LLM (GPT-4 in the paper): ``evokd patch demonstrations``.

The student translates a sample of the pool (``sample`` sentences drawn with
``numpy.random.default_rng(seed)``, or all of it when smaller), and the feedback prompt
(:mod:`.llm`, ``feedback.txt``) is written for each::

    DIR/demonstrations/prompts.jsonl   id, source, student, prompt
    DIR/demonstrations/pairs.jsonl     (with a server) id, prompt, reply, messages: the
                                       chat format of fine-tuning tools,
                                       [{"role": "user", "content": prompt},
                                        {"role": "assistant", "content": reply}]

Only replies in the stated format (:func:`.llm.parse_feedback`) become pairs: a patcher
learns the format from them; the others are counted. Replies are kept in the reply cache
(``DIR/replies``), so a rerun pays nothing. Fine-tuning on ``pairs.jsonl`` is left to the
user's tools; the fine-tuned patcher is then served and given as ``evokd patch --teacher``.
"""

import logging

import numpy as np

from evokd.errors import EvokdError

from .llm import Prompts, open_llm, parse_feedback, read_replies
from .workspace import Workspace, write_jsonl

logger = logging.getLogger(__name__)


def write_demonstrations(student, data, out, *, teacher=None, pool=None, sample=100, seed=1,
                         cfg=None):  # fmt: skip
    """Write the prompts (and, with ``teacher``, the pairs) of ``out/demonstrations``;
    returns counts. ``cfg``: a :class:`.config.PatchConfig` (decoding, server settings)."""
    from evokd.core.checkpoint import check_exists, languages, load_checkpoint
    from evokd.core.inference import choose_device

    from .llm_steps import student_rows
    from .pool import open_pool
    from .translate import load_translator

    if not (isinstance(sample, int) and sample >= 1):
        raise EvokdError(f"--sample {sample}: expected a whole number >= 1")
    check_exists(student, "--student")
    src, tgt = languages(load_checkpoint(student, "--student"), data)
    ws = Workspace(out)
    inputs = {"student": student, "data": data, "pool": pool}
    source_pool = open_pool(ws, inputs, "pool", src, tgt)
    ids = source_pool.ids()
    if len(ids) > sample:
        ids = sorted(np.random.default_rng(seed).choice(ids, size=sample, replace=False).tolist())
    model = load_translator(student, source_pool, cfg.decoding(), choose_device(cfg.cpu),
                            flag="--student")  # fmt: skip
    batches = model.plan_batches(cfg.max_tokens, ids=ids, too_long="skip")
    rows = student_rows(model, source_pool, batches)
    prompts = Prompts(cfg.prompts, src, tgt)
    for row in rows:
        row["prompt"] = prompts.render("feedback", source=row["source"], translation=row["student"])
    folder = ws.out / "demonstrations"
    folder.mkdir(parents=True, exist_ok=True)
    keys = ("id", "source", "student", "prompt")
    write_jsonl(folder / "prompts.jsonl", [{k: row[k] for k in keys} for row in rows])
    stats = {"prompts": len(rows), "file": str(folder / "prompts.jsonl")}
    if teacher is None:
        return stats
    with open_llm({"teacher": teacher}, cfg, src, tgt, ws) as llm:
        replies = llm.complete([row["prompt"] for row in rows], cfg.llm_max_tokens)
        read = lambda reply, i: parse_feedback(reply, rows[i]["source"])  # noqa: E731
        parsed, failed = read_replies(replies, read, "demonstration")
        usage = dict(llm.usage)
    pairs = [
        {"id": row["id"], "prompt": row["prompt"], "reply": reply,
         "messages": [{"role": "user", "content": row["prompt"]},
                      {"role": "assistant", "content": reply}]}
        for row, (reply,), (value,) in zip(rows, replies, parsed)
        if value is not None
    ]  # fmt: skip
    write_jsonl(folder / "pairs.jsonl", pairs)
    stats.update(pairs=len(pairs), unparsed=failed, pairs_file=str(folder / "pairs.jsonl"))
    return {**stats, "llm": usage}
