"""All the steps of a patch run in order, each skipped when finished: :func:`run_patch`."""

import hashlib
import json
import logging
from pathlib import Path

from evokd.data.folder import data_digest
from evokd.errors import EvokdError
from evokd.teachers.engine import folder_digest

from .config import PatchConfig
from .workspace import STEPS, Workspace

logger = logging.getLogger(__name__)


def needs(step, cfg):
    """The steps that must be finished before ``step``."""
    if step == "build":
        return ["select"] + ["synthesize"] * cfg.synthesis + ["analogy"] * cfg.analogy
    return {"translate": [], "select": ["translate"], "train": ["build"]}.get(step, ["select"])


def enabled_steps(cfg):
    off = {"synthesize": not cfg.synthesis, "analogy": not cfg.analogy}
    return [s for s in STEPS if not off.get(s)]


def is_llm(teacher):
    """Whether ``teacher`` is an LLM (a server URL or a Hugging Face causal-LM folder) rather
    than a fairseq checkpoint; anything else is an error naming the kinds accepted."""
    from evokd.teachers.text import teacher_kind

    kind = teacher_kind(teacher)
    if kind == "ctranslate2" or (kind == "huggingface" and seq2seq(teacher)):
        raise EvokdError(
            f"--teacher {teacher}: a {kind} translation model cannot give feedback; patch needs "
            "a fairseq checkpoint or an LLM (a server URL, a Hugging Face causal-LM folder)"
        )
    return kind != "fairseq"


def seq2seq(folder):
    config = Path(folder) / "config.json"
    return bool(json.loads(config.read_text(encoding="utf-8")).get("is_encoder_decoder"))


def check_inputs(inputs, cfg, steps):
    """Everything that can be wrong with the inputs, found before any work."""
    from evokd.core.checkpoint import check_dictionaries, check_exists, languages, load_checkpoint
    from evokd.data import read_metadata
    from evokd.data.folder import language_pair
    from evokd.data.textio import check_file

    llm = is_llm(inputs["teacher"])
    check_exists(inputs["student"], "--student")
    if not llm:
        check_exists(inputs["teacher"], "--teacher")
    data = inputs["data"]
    if not Path(data).is_dir():
        raise EvokdError(f"--data {data}: no such folder (expected fairseq binarized data)")
    models = ("student",) if llm else ("student", "teacher")
    states = {key: load_checkpoint(inputs[key], f"--{key}") for key in models}
    src, tgt = languages(states[models[-1]], data)
    language_pair(data, "train", src, tgt)
    language_pair(data, "train", tgt, src)
    for key, state in states.items():
        check_dictionaries(state, inputs[key], data, src, tgt, f"--{key}")
    if llm:
        try:
            read_metadata(data)
        except EvokdError as exc:
            raise EvokdError(f"--teacher {inputs['teacher']}: an LLM teacher's text is encoded "
                             f"like DATA's: {exc}") from exc  # fmt: skip
    for key in ("pool", "mono"):
        if inputs[key] is not None:
            check_file(inputs[key], f"--{key}: raw {src} sentences, one a line, UTF-8")
            try:
                read_metadata(data)
            except EvokdError as exc:
                raise EvokdError(f"--{key} needs the tokenizer and BPE of --data: {exc}") from exc
    if "train" in steps:
        from evokd.chain.plan import load_plan

        load_plan(cfg.plan)
    return src, tgt


def step_key(step, ws, cfg, inputs, src, tgt):
    """A step's settings and the sha256 of what it reads: its record's key."""
    decoding = dict(cfg.decoding(), max_tokens=cfg.max_tokens)  # the batches: the translations
    data = data_digest(inputs["data"], "train", src, tgt)
    if is_llm(inputs["teacher"]):
        from .llm import Prompts

        teacher = folder_digest(f"{inputs['teacher']} {cfg.teacher_model}")
        if not str(inputs["teacher"]).startswith(("http://", "https://")):
            teacher = folder_digest(inputs["teacher"])
        prompts = json.dumps(Prompts(cfg.prompts, src, tgt).templates, sort_keys=True)
        decoding.update(teacher_model=cfg.teacher_model, teacher_api=cfg.teacher_api,
                        llm_max_tokens=cfg.llm_max_tokens, llm_samples=cfg.llm_samples,
                        prompts_sha256=hashlib.sha256(prompts.encode()).hexdigest())  # fmt: skip
    else:
        teacher = ws.digest(inputs["teacher"])
    mono = ws.digest(inputs["mono"]) if inputs["mono"] else data
    if step == "translate":
        pool = ws.digest(inputs["pool"]) if inputs["pool"] else data
        settings = {**decoding, "pool": inputs["pool"]}
        files = {"student": ws.digest(inputs["student"]), "teacher": teacher, "pool": pool}
    elif step == "select":
        settings = {"select": cfg.select, "score": cfg.score}
        files = {"translations": ws.digest(ws.translations)}
    elif step == "synthesize":
        settings = {**decoding, "synth_n": cfg.synth_n, "mono": inputs["mono"]}
        files = {"selected": ws.digest(ws.selected), "teacher": teacher, "mono": mono}
    elif step == "analogy":
        settings = {**decoding, "analogy_k": cfg.analogy_k, "synth_n": cfg.synth_n}
        settings["mono"] = inputs["mono"]
        files = {"selected": ws.digest(ws.selected), "teacher": teacher, "mono": mono}
        files["data"] = data
    elif step == "build":
        settings = {"synthesis": cfg.synthesis, "analogy": cfg.analogy}
        settings.update(replay_ratio=cfg.replay_ratio, seed=cfg.seed)
        files = {"selected": ws.digest(ws.selected), "data": data}
        for on, name, path in ((cfg.synthesis, "synthesis", ws.synthesis),
                               (cfg.analogy, "analogy", ws.analogy)):  # fmt: skip
            if on:
                files[name] = ws.digest(path)
    else:
        from .finetune import train_settings

        settings = train_settings(cfg)
        files = {"patch": ws.digest(ws.patch), "student": ws.digest(inputs["student"])}
    files = {f"{name}_sha256": digest for name, digest in files.items()}
    return json.loads(json.dumps({"settings": settings, "inputs": files}))


def run_step(ws, cfg, inputs, src, tgt, step):
    """Run one step unless it is finished; returns its stats."""
    from .analogy import run_analogy
    from .build import run_build
    from .finetune import run_train
    from .select import run_select
    from .synthesize import run_synthesize
    from .translate import run_translate

    llm = is_llm(inputs["teacher"])
    ws.require(step, needs(step, cfg))
    state = ws.begin(step, step_key(step, ws, cfg, inputs, src, tgt))
    if state == "done":
        logger.info("step %s: finished earlier, skipped", step)
        return ws.record(step)["stats"]
    logger.info("step %s: %s", step, "resuming" if state == "resume" else "starting")
    if llm:
        from . import llm_steps

        run_translate, run_synthesize = llm_steps.run_feedback, llm_steps.run_llm_synthesize
        run_analogy = llm_steps.run_llm_analogy
    runners = {
        "translate": lambda: run_translate(ws, cfg, inputs, src, tgt),
        "select": lambda: llm_steps.run_flagged(ws) if llm else run_select(ws, cfg),
        "synthesize": lambda: run_synthesize(ws, cfg, inputs, src, tgt),
        "analogy": lambda: run_analogy(ws, cfg, inputs, src, tgt),
        "build": lambda: run_build(ws, cfg, inputs, src, tgt),
        "train": lambda: run_train(ws, cfg, inputs),
    }
    stats = runners[step]()
    ws.finish(step, stats)
    return stats


def run_patch(student=None, teacher=None, data=None, out=None, *, pool=None, mono=None,
              steps=None, **settings):  # fmt: skip
    """Patch a student with its teacher's feedback (MT-Patcher, Li et al., NAACL 2024).

    ``student``, ``teacher``: fairseq checkpoints; ``data``: the binarized data both were
    trained on; ``out``: the output folder (see :mod:`evokd.methods.patch`); ``pool``/``mono``:
    files of raw source sentences to translate / to retrieve from (default: DATA's
    training source). Inputs fixed by an earlier run of ``out`` may be left out.
    ``steps``: the steps to run (default: every enabled step, in order); the others must
    be finished when needed. ``settings``: the fields of :class:`PatchConfig` (``select``,
    ``score``, ``synthesis``, ``synth_n``, ``analogy``, ``analogy_k``, ``replay_ratio``,
    ``seed``, ``plan``, ``max_epoch``, ``evaluate``, ``train_args``, decoding, ``cpu``).

    ``teacher`` may instead be an LLM (a server URL with ``teacher_model``, or a Hugging Face
    causal-LM folder): the steps are then :mod:`.llm_steps`'.

    Returns ``{step: its stats}`` (also in ``out/steps/STEP.json``); the train step's
    are the evaluation summary of ``out/results.json``. With an LLM teacher, ``"report"``:
    ``out/report.json`` (:func:`.llm_steps.write_report`).
    """
    if out is None:
        raise EvokdError("--out: required (the folder of the patch run)")
    unknown = set(settings) - set(PatchConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"run_patch: unknown settings {sorted(unknown)}")
    cfg = PatchConfig(**settings)
    cfg.check()
    steps = list(steps) if steps else enabled_steps(cfg)
    for step in steps:
        if step not in STEPS:
            raise EvokdError(f"step {step!r}: expected one of {', '.join(STEPS)}")
    ws = Workspace(out)
    given = {"student": student, "teacher": teacher, "data": data, "pool": pool, "mono": mono}
    inputs = ws.resolve_inputs(given)
    src, tgt = check_inputs(inputs, cfg, steps)
    ws.save_inputs(inputs)
    stats = {step: run_step(ws, cfg, inputs, src, tgt, step) for step in steps}
    if is_llm(inputs["teacher"]):
        from .llm_steps import write_report

        stats["report"] = write_report(ws)
    return stats
