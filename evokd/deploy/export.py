"""Export a fairseq translation checkpoint to CTranslate2, the fast inference engine.

The conversion itself (CTranslate2's ``FairseqConverter``, and what evokd checkpoints need
for it) is :func:`evokd.core.ct2.convert`, shared with ``evokd distill-data --engine
ctranslate2``.

The model is written to ``OUT.partial`` and renamed to ``OUT`` when complete, with
``evokd_export.json`` recording what it was made from. With a shortlist
(:mod:`evokd.deploy.shortlist`) the folder also holds ``vmap.txt``, which CTranslate2 uses
when translating with ``use_vmap=True``.
"""

import json
import logging
import os
import shutil
from pathlib import Path

from evokd import files
from evokd.core.checkpoint import check_dictionaries, languages, load_checkpoint, model_config
from evokd.core.ct2 import (
    MODEL_FILE,
    QUANTIZATIONS,
    check_quantization,
    convert,
    require_ctranslate2,
)
from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

EXPORT_INFO = "evokd_export.json"  # written into every exported model folder

__all__ = [
    "EXPORT_INFO", "MODEL_FILE", "QUANTIZATIONS", "export_ct2", "model_size", "require_ctranslate2",
    "resolve_data",
]  # fmt: skip


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
    check_quantization(quantization)
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
    partial = out.with_name(out.name + ".partial")
    args = convert(checkpoint, state, data, src, tgt, partial, quantization)
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
