"""A fairseq checkpoint converted to a CTranslate2 model: what ``evokd export --ct2`` writes
and what ``evokd distill-data --engine ctranslate2`` decodes with.

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

The vocabularies of the converted model are the data folder's ``dict.{src,tgt}.txt`` in
their order, so that the model reads and writes the same BPE pieces as fairseq; the source
end of sentence is added by CTranslate2 itself (``add_source_eos``).
"""

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from evokd.core.checkpoint import architecture, model_config, register_safe_globals
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
MODEL_FILE = "model.bin"  # CTranslate2's weights file
INSTALL = 'pip install -e ".[ct2]" (or pip install ctranslate2)'
# Task settings of evokd_translation that only training reads; cleared for the converter.
_TRAINING_ONLY = ("teacher_path", "teacher_cache", "init_student_from")


def require_ctranslate2(needed_by=None):
    """The ``ctranslate2`` module, or an error that says how to install it (and, if given,
    what needs it: ``needed_by``)."""
    try:
        import ctranslate2
    except ImportError as exc:
        why = f" (needed by {needed_by})" if needed_by else ""
        raise EvokdError(f"CTranslate2 is not installed{why}: {INSTALL}") from exc
    return ctranslate2


def check_quantization(quantization, flag="--quantization"):
    """Fail naming ``flag`` unless ``quantization`` is one of :data:`QUANTIZATIONS`."""
    if quantization not in QUANTIZATIONS:
        raise EvokdError(f"{flag} {quantization}: expected one of {', '.join(QUANTIZATIONS)}")


def converter_args(state, data, src, tgt, checkpoint):
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
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY

    if args.arch not in ARCH_MODEL_NAME_REGISTRY:
        raise EvokdError(
            f"{checkpoint}: architecture {args.arch!r} is not registered with fairseq "
            "(a model from another plugin? import it before exporting)"
        )
    return args


def convert(checkpoint, state, data, src, tgt, folder, quantization):
    """Write the CTranslate2 model of ``checkpoint`` (its loaded ``state``, whose dictionaries
    the caller has checked against ``data``'s) into the new folder ``folder``, weights in
    ``quantization``. ``folder`` holds the complete model, or is removed. Returns the
    converter's namespace (its ``arch``)."""
    check_quantization(quantization)
    require_ctranslate2()
    args = converter_args(state, data, src, tgt, checkpoint)

    import torch
    from ctranslate2.converters import FairseqConverter

    register_safe_globals()  # the converter loads with weights_only=True
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="evokd-ct2-") as tmp:
        plain = Path(tmp) / "checkpoint.pt"
        torch.save({"args": args, "cfg": None, "model": state["model"]}, plain)
        converter = FairseqConverter(str(plain), str(data), source_lang=src, target_lang=tgt)
        logger.info(f"converting {checkpoint} ({args.arch}) to CTranslate2 {quantization}")
        try:
            converter.convert(str(folder), quantization=quantization, force=True)
        except (ValueError, NotImplementedError) as exc:  # the converter's unsupported options
            raise EvokdError(f"{checkpoint}: CTranslate2 cannot convert it: {exc}") from exc
        finally:
            if not (folder / MODEL_FILE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
    return args
