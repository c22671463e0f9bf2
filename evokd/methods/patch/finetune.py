"""Step ``train``: fine-tune the student on the patch data as a chain stage, then evaluate.

The stage is ``{name: patch, arch: the student's, init_from: the student checkpoint,
data: DIR/data, max_epoch}`` in a one-stage plan whose fairseq flags are the ``train:``
section of a plan (a preset name or a plan file, ``tiny`` by default), with the student's
own model sizes on top (:data:`MODEL_KEYS`, so that its weights fit, whatever the preset
says). :class:`evokd.chain.stage.StageTrainer` trains it into ``DIR/checkpoints`` (skipped when
finished, resumed from ``checkpoint_last.pt`` when interrupted): fresh optimizer and LR
schedule, the student's weights. The student and the patched student
(``checkpoint_best.pt``) are then evaluated on DATA with the plan's ``evaluate:`` settings
(:func:`evokd.evaluation.evaluate.evaluate_checkpoint`): ``DIR/results/{student,patched}.json`` and
the summary ``DIR/results.json``.
"""

import logging

from evokd.errors import EvokdError
from evokd.files import write_json

logger = logging.getLogger(__name__)

# Model settings copied from the student checkpoint into the stage's flags.
MODEL_KEYS = (
    "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
    "decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_layers", "decoder_attention_heads",
    "decoder_output_dim", "share_decoder_input_output_embed",
    "share_all_embeddings", "encoder_normalize_before", "decoder_normalize_before",
    "encoder_learned_pos", "decoder_learned_pos", "no_token_positional_embeddings",
    "layernorm_embedding", "no_scale_embedding", "max_source_positions", "max_target_positions",
)  # fmt: skip
SCORES = ("bleu", "sacrebleu", "chrf")


def model_flags(state):
    """The student's model settings as stage flags (``False`` leaves a preset's switch out)."""
    from evokd.core.checkpoint import model_config

    cfg = model_config(state)
    flags = {}
    for key in MODEL_KEYS:
        value = getattr(cfg, key, None)
        if value is not None:
            flags[key.replace("_", "-")] = value
    return flags


def patch_plan(cfg, inputs, ws):
    """The one-stage plan that fine-tunes the student on ``DIR/data``."""
    from evokd.chain.plan import Plan, Stage, load_plan
    from evokd.core.checkpoint import architecture, load_checkpoint

    base = load_plan(cfg.plan)
    state = load_checkpoint(inputs["student"], "--student")
    train = {str(k).lstrip("-").replace("_", "-"): v for k, v in base.train.items()}
    stage = Stage(
        name="patch",
        arch=architecture(state),
        init_from=inputs["student"],
        max_epoch=cfg.max_epoch,
        flags=model_flags(state),
        description="the student fine-tuned on its patch data",
        data=str(ws.data),
    )
    return Plan(
        name="patch",
        data=inputs["data"],
        stages=[stage],
        path=base.path,
        train=train,
        evaluate=dict(base.evaluate),
    )


def train_settings(cfg):
    """What the train step's result depends on (its record's key)."""
    from evokd.chain.plan import load_plan

    base = load_plan(cfg.plan)
    return {
        "train": base.train,
        "evaluate": base.evaluate if cfg.evaluate else None,
        "max_epoch": cfg.max_epoch,
        "train_args": list(cfg.train_args),
    }


def stage_trainer(plan, ws, cfg):
    """The trainer of the patch stage, into ``DIR/checkpoints``."""
    from evokd.chain.layout import Layout
    from evokd.chain.stage import StageTrainer
    from evokd.core.devices import Devices

    layout = Layout(plan, "patch", ws.out, ws.out, stage_dirs={"patch": ws.checkpoints})
    return StageTrainer(plan, layout, Devices(gpus=0 if cfg.cpu else None), cfg.train_args)


def run_train(ws, cfg, inputs):
    """Train (or resume) the patch stage, then evaluate; returns the summary."""
    from evokd.chain.plan import validate

    ws.check_data()
    plan = patch_plan(cfg, inputs, ws)
    trainer = stage_trainer(plan, ws, cfg)
    stage = plan.stages[0]
    if trainer.is_finished(stage):
        logger.info("train: %s finished earlier", ws.checkpoints)
    else:
        validate(plan)
        trainer.check(stage)
        trainer.train(stage)
    best = ws.checkpoints / "checkpoint_best.pt"
    if not best.is_file():
        raise EvokdError(f"train: fairseq-train left no {best}")
    summary = {"checkpoint": str(best), "record": str(trainer.layout.stage_record_path(stage))}
    if cfg.evaluate:
        summary.update(evaluate_both(ws, cfg, inputs, plan.evaluate, best))
    write_json(ws.results, summary)
    return summary


def evaluate_both(ws, cfg, inputs, settings, best):
    """Scores of the student and of the patched student, and their differences."""
    from evokd.evaluation.evaluate import evaluate_checkpoint

    out, scores = ws.out / "results", {}
    for name, checkpoint in (("student", inputs["student"]), ("patched", best)):
        result = evaluate_checkpoint(
            str(checkpoint), inputs["data"], cpu=cfg.cpu, out=str(out / f"{name}.json"), **settings
        )
        scores[name] = {key: result[key] for key in ("checkpoint", "subset", *SCORES)}
    before, after = scores["student"], scores["patched"]
    scores["difference"] = {
        key: None if before[key] is None else round(after[key] - before[key], 4) for key in SCORES
    }
    return scores
