"""Export a fairseq translation checkpoint to CTranslate2, the fast inference engine.

The conversion is CTranslate2's own ``ctranslate2.converters.FairseqConverter``, run
in-process. Two things stand between it and an evokd checkpoint:

- torch >= 2.6 loads with ``weights_only=True``: the converter's ``torch.load`` needs the
  types of :func:`evokd.core.checkpoint.register_safe_globals`, registered here first.
- The converter rebuilds the checkpoint's *task* before its model. A student trained with
  ``--task evokd_translation`` would then check that its ``--teacher-path`` and
  ``--init-student-from`` files still exist and open its ``--teacher-cache``, none of which
  inference needs. So the converter is given a copy of the checkpoint (in a temporary
  folder) holding only the weights and the model config with the task set to plain
  ``translation`` and the languages resolved. The architecture is untouched: the
  ``transformer_evokd_*`` names are registered by importing :mod:`evokd` and resolve to
  fairseq's ``transformer`` model, which the converter supports.

The model is written to ``OUT.partial`` and renamed to ``OUT`` when complete, with
``evokd_export.json`` recording what it was made from. With a shortlist
(:mod:`evokd.deploy.shortlist`) the folder also holds ``vmap.txt``, which CTranslate2 uses
when translating with ``use_vmap=True``.
"""

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from evokd import files
from evokd.core.checkpoint import (
    architecture,
    check_dictionaries,
    languages,
    load_checkpoint,
    model_config,
    register_safe_globals,
)
from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

# ctranslate2.specs.model_spec.ACCEPTED_MODEL_TYPES, known without importing ctranslate2
QUANTIZATIONS = (
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)
EXPORT_INFO = "evokd_export.json"  # written into every exported model folder
MODEL_FILE = "model.bin"  # CTranslate2's weights file
# Task settings of evokd_translation that only training reads; cleared for the converter.
_TRAINING_ONLY = ("teacher_path", "teacher_cache", "init_student_from")


def require_ctranslate2():
    """The ``ctranslate2`` module, or an error that says how to install it."""
    try:
        import ctranslate2
    except ImportError as exc:
        raise EvokdError(
            'CTranslate2 is not installed: pip install -e ".[ct2]" (or pip install ctranslate2)'
        ) from exc
    return ctranslate2


def model_size(model_dir):
    """Bytes of the weights file of a CTranslate2 model folder."""
    return (Path(model_dir) / MODEL_FILE).stat().st_size


def _check_output(out, force):
    """Refuse an existing ``out`` unless ``force``, and even then anything but a model."""
    out = Path(out)
    if not out.exists():
        return
    if not force:
        raise EvokdError(f"{out} exists; pass --force to replace it")
    is_model = out.is_dir() and any((out / n).is_file() for n in (MODEL_FILE, EXPORT_INFO))
    if not (is_model or (out.is_dir() and not any(out.iterdir()))):
        raise EvokdError(
            f"{out} exists and is not a CTranslate2 model folder (no {MODEL_FILE}); "
            "not replacing it even with --force"
        )


def resolve_data(state, data, checkpoint):
    """``data``, else the checkpoint's own ``cfg.task.data`` when that folder exists."""
    if data is not None:
        if not Path(data).is_dir():
            raise EvokdError(f"--data {data}: no such folder (expected a fairseq data-bin folder)")
        return Path(data)
    task = state["cfg"].get("task") or {}
    recorded = task.get("data") or getattr(model_config(state), "data", None)
    # fairseq's --data may list shards separated by os.pathsep; the first holds the dictionaries
    recorded = str(recorded).split(os.pathsep)[0] if recorded else None
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    where = f"its data folder {recorded} does not exist" if recorded else "it names no data"
    raise EvokdError(
        f"{checkpoint}: {where}; pass --data DATA_BIN (the folder with the dictionaries "
        "the model was trained with)"
    )


def _converter_args(state, data, src, tgt, checkpoint):
    """The checkpoint's model config as the Namespace the converter reads, task made plain."""
    cfg = model_config(state)
    if not isinstance(cfg, argparse.Namespace):  # every model the converter supports has one
        raise EvokdError(
            f"{checkpoint}: architecture {architecture(state)!r} has no argparse config; "
            "CTranslate2's fairseq converter supports "
            "the transformer, transformer_align, multilingual_transformer and bart models"
        )
    args = argparse.Namespace(**vars(cfg))
    for name in _TRAINING_ONLY:
        if hasattr(args, name):
            setattr(args, name, None)
    args.task = "translation"
    args.data, args.source_lang, args.target_lang = str(data), src, tgt
    return args


def _check_architecture(args, checkpoint):
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY

    if args.arch not in ARCH_MODEL_NAME_REGISTRY:
        raise EvokdError(
            f"{checkpoint}: architecture {args.arch!r} is not registered with fairseq "
            "(a model from another plugin? import it before exporting)"
        )


def export_ct2(checkpoint, out, data=None, quantization="int8", force=False, shortlist=None):
    """Convert ``checkpoint`` into the CTranslate2 model folder ``out``.

    ``data``: the data-bin folder with ``dict.{src}.txt`` and ``dict.{tgt}.txt`` (default:
    the checkpoint's ``cfg.task.data`` when it exists). ``quantization``: the weight type,
    one of :data:`QUANTIZATIONS` (``int8`` is the fast CPU choice; ``float32`` translates
    like fairseq). An existing ``out`` is an error unless ``force``, and nothing is
    overwritten before the new model is complete. Returns the contents of
    ``evokd_export.json``: checkpoint, architecture, data, source_lang, target_lang,
    quantization, model_bytes, ctranslate2 (its version), shortlist (None, or how the
    :class:`evokd.deploy.shortlist.Shortlist` written as ``vmap.txt`` was built: its
    folder, sizes and coverage); a shortlist built from other dictionaries is an error.
    """
    if quantization not in QUANTIZATIONS:
        raise EvokdError(
            f"--quantization {quantization}: expected one of {', '.join(QUANTIZATIONS)}"
        )
    ctranslate2 = require_ctranslate2()
    out = Path(out)
    _check_output(out, force)
    state = load_checkpoint(str(checkpoint), "CKPT")
    data = resolve_data(state, data, checkpoint)
    src, tgt = languages(state, data)
    check_dictionaries(state, checkpoint, data, src, tgt, "CKPT")
    if shortlist is not None:
        from evokd.deploy.shortlist import check_same_dictionaries

        check_same_dictionaries(shortlist.info["data"], data, (src, tgt))
    args = _converter_args(state, data, src, tgt, checkpoint)
    _check_architecture(args, checkpoint)

    import torch
    from ctranslate2.converters import FairseqConverter

    register_safe_globals()  # the converter loads with weights_only=True
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="evokd-export-") as tmp:
        plain = Path(tmp) / "checkpoint.pt"
        torch.save({"args": args, "cfg": None, "model": state["model"]}, plain)
        converter = FairseqConverter(str(plain), str(data), source_lang=src, target_lang=tgt)
        logger.info(f"converting {checkpoint} ({args.arch}) to CTranslate2 {quantization}")
        try:
            converter.convert(str(partial), quantization=quantization, force=True)
        except (ValueError, NotImplementedError) as exc:  # the converter's unsupported options
            raise EvokdError(f"{checkpoint}: CTranslate2 cannot convert it: {exc}") from exc
        finally:
            if not (partial / MODEL_FILE).is_file():
                shutil.rmtree(partial, ignore_errors=True)
    info = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "architecture": args.arch,
        "data": str(Path(data).resolve()),
        "source_lang": src,
        "target_lang": tgt,
        "quantization": quantization,
        "model_bytes": model_size(partial),
        "ctranslate2": ctranslate2.__version__,
        "shortlist": None if shortlist is None else shortlist.info,
    }
    if shortlist is not None:
        from evokd.deploy.shortlist import VMAP, check_model

        (partial / VMAP).write_text(shortlist.vmap_text(), encoding="utf-8")
        check_model(partial)
    (partial / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if out.exists():  # --force, checked above: a model folder or an empty one
        shutil.rmtree(out)
    files.publish(partial, out)
    logger.info(f"wrote {out} ({info['model_bytes'] / 2**20:.2f} MiB, {quantization})")
    return info
