"""Loading fairseq checkpoints on torch >= 2.6, with errors that name the file.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``; fairseq stores an
``argparse.Namespace`` (the model config of legacy architectures) in every checkpoint, so
it has to be allow-listed once before any load. Standalone entry points that load
checkpoints before importing :mod:`evokd` call :func:`register_safe_globals` themselves.
"""

import argparse
import logging
import os
import shutil
import zipfile
from pathlib import Path

from evokd.core.runtime import FAIRSEQ_CONFIG_LOCK
from evokd.data.folder import dictionary_path, dictionary_size, symbols
from evokd.errors import EvokdError
from evokd.files import partial_path, publish

logger = logging.getLogger(__name__)


def _numpy_globals():
    """The numpy types fairseq's saved meters hold (e.g. the BLEU counts of --eval-bleu)."""
    import numpy as np

    try:
        multiarray = np._core.multiarray  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        multiarray = np.core.multiarray
    found = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    for name in ("float64", "float32", "float16", "int64", "int32", "bool_"):
        found.append(type(np.dtype(getattr(np, name))))
    return found


def register_safe_globals():
    """Allow-list the non-tensor types that fairseq checkpoints hold."""
    import torch

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 loads everything anyway
        add([argparse.Namespace, *_numpy_globals()])


class CheckpointError(EvokdError):
    """A checkpoint file is missing, unreadable or does not fit the run."""


def check_exists(path, flag):
    """Fail early, naming the flag, when ``path`` is not a file."""
    if not path:
        raise CheckpointError(f"{flag}: no checkpoint path given")
    if not os.path.isfile(path):
        raise CheckpointError(f"{flag} {path}: no such file (expected a fairseq checkpoint .pt)")


def load_checkpoint(path, flag="checkpoint"):
    """Load a fairseq checkpoint to CPU (with fairseq's upgrades), or fail naming the file.

    Returns the state dict with ``cfg`` (an OmegaConf config) and ``model``.
    """
    from fairseq import checkpoint_utils

    check_exists(path, flag)
    register_safe_globals()
    try:
        with FAIRSEQ_CONFIG_LOCK:  # upgrading an old checkpoint composes a config
            state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as exc:  # unpickling and upgrade errors come in many types
        raise CheckpointError(f"{flag} {path}: {_diagnose(path, exc)}") from exc
    if not isinstance(state, dict) or "model" not in state or state.get("cfg") is None:
        raise CheckpointError(f"{flag} {path}: {_not_fairseq(state)}")
    return state


def _not_fairseq(state):
    found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
    return f"not a fairseq checkpoint (expected the keys 'model' and 'cfg'/'args', found {found})"


def _diagnose(path, exc):
    """Why fairseq could not load ``path``: not a torch file, or not a fairseq one."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return f"not a readable fairseq checkpoint ({type(exc).__name__}: {exc})"
    if not isinstance(state, dict) or "model" not in state:
        return _not_fairseq(state)
    return f"not a readable fairseq checkpoint ({type(exc).__name__}: {exc})"


def load_raw(path, flag="checkpoint"):
    """A checkpoint as torch stored it (no fairseq upgrades), so that it can be saved again."""
    import torch

    check_exists(path, flag)
    register_safe_globals()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        state = None
    if not isinstance(state, dict) or "model" not in state:
        load_checkpoint(path, flag)  # raises the error that says what is wrong
        raise CheckpointError(f"{flag} {path}: not a fairseq checkpoint")
    return state


def model_config(state):
    """The model config (a Namespace for legacy architectures, else a DictConfig)."""
    return state["cfg"]["model"]


def architecture(state):
    cfg = model_config(state)
    return getattr(cfg, "arch", None) or getattr(cfg, "_name", None)


def copy_weights(model, path, flag="--init-student-from"):
    """Copy the model weights stored in ``path`` into ``model`` (nothing else).

    Parameter names and shapes must match exactly; otherwise the error lists the first
    mismatches with both shapes.
    """
    state = load_checkpoint(path, flag)
    theirs = state["model"]
    ours = model.state_dict()
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [
        f"{k}: checkpoint {tuple(theirs[k].shape)} vs student {tuple(v.shape)}"
        for k, v in ours.items()
        if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        details = shapes[:5] + [f"missing in checkpoint: {k}" for k in missing[:3]]
        details += [f"not in student: {k}" for k in unexpected[:3]]
        raise CheckpointError(
            f"{flag} {path}: its weights (architecture {architecture(state)!r}) do not fit "
            f"the student: " + "; ".join(details)
        )
    model.load_state_dict(theirs, strict=True, model_cfg=model_config(state))
    logger.info(f"student initialised from {path} ({len(ours)} tensors); optimizer fresh")


# --- does a checkpoint fit a data folder ----------------------------------------------------


def languages(state, data):
    """(source, target) language: the checkpoint state's task, else ``data``'s file names."""
    from fairseq.data.data_utils import infer_language_pair

    task = state["cfg"].get("task") or {}
    src, tgt = getattr(task, "source_lang", None), getattr(task, "target_lang", None)
    if src is None or tgt is None:
        src, tgt = infer_language_pair(str(data))
    if src is None or tgt is None:
        raise EvokdError(f"--data {data}: no binarized SPLIT.SRC-TGT.LANG.idx files found")
    return src, tgt


def check_dictionaries(state, path, data, src, tgt, flag):
    """Fail unless the checkpoint ``state`` (read from ``path``, given as ``flag``) was trained
    with ``data``'s dictionaries: one embedding row per entry, and the same symbols as the
    dictionaries of the folder it was trained on, when that folder is still there."""
    task = state["cfg"].get("task") if hasattr(state["cfg"], "get") else None
    trained_on = getattr(task, "data", None) if task is not None else None
    for side, name, lang in (("encoder", "source", src), ("decoder", "target", tgt)):
        ours = dictionary_path(data, lang)
        if not ours.is_file():
            raise EvokdError(f"--data {data}: no dict.{lang}.txt (expected fairseq binarized data)")
        weight = state["model"].get(f"{side}.embed_tokens.weight")
        size = dictionary_size(ours)
        if weight is not None and weight.shape[0] != size:
            raise CheckpointError(
                f"{flag} {path}: its {side} embeddings have {weight.shape[0]} rows: the "
                f"checkpoint's {name} dictionary has {weight.shape[0]} entries but the data's "
                f"({ours}) has {size}; it must be trained on the same binarized data (the same "
                "dict.*.txt)"
            )
        theirs = dictionary_path(trained_on, lang) if trained_on else None
        if theirs is None or not theirs.is_file() or theirs.resolve() == ours.resolve():
            continue
        if symbols(theirs) != symbols(ours):
            raise CheckpointError(
                f"{flag} {path}: the checkpoint was trained with {theirs}, whose symbols differ "
                f"from the data's {ours} (both have {size} entries); it must be trained on "
                "the same binarized data (the same dict.*.txt)"
            )


def build_model(path, task, flag="--teacher-path", state=None):
    """Build the model stored in ``path`` for ``task``'s dictionaries (checked) and load its
    weights; ``state``: the checkpoint already loaded from ``path``, so it is read once.

    The architecture comes from the checkpoint. The global RNG is left untouched, so a
    student built afterwards gets the same random initialisation as without a teacher.
    """
    import torch
    from fairseq import models

    state = load_checkpoint(path, flag) if state is None else state
    cfg = task.cfg
    check_dictionaries(state, path, cfg.data, cfg.source_lang, cfg.target_lang, flag)
    model_cfg = model_config(state)
    with torch.random.fork_rng(devices=[]):
        model = models.build_model(model_cfg, task, from_checkpoint=True)
    try:
        model.load_state_dict(state["model"], strict=True, model_cfg=model_cfg)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{flag} {path}: its weights do not fit its own architecture "
            f"{architecture(state)!r} with this data's dictionaries: {exc}"
        ) from exc
    return model


def state_languages(state):
    """(source, target) language of a checkpoint's task; None where it does not say."""
    task_cfg = state["cfg"]["task"]
    return getattr(task_cfg, "source_lang", None), getattr(task_cfg, "target_lang", None)


BUFFER_SUFFIXES = (".version", "._float_tensor")  # state-dict entries that are not parameters


def count_parameters(model_state):
    """Parameters of a model state dict: tied tensors once, buffers (``version``) not at all.

    Equals ``sum(p.numel() for p in model.parameters())`` for fairseq's transformers, the
    "num. shared model params" that fairseq-train logs.
    """
    import torch

    seen, total = set(), 0
    for key, tensor in model_state.items():
        if key.endswith(BUFFER_SUFFIXES) or not torch.is_tensor(tensor):
            continue
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
        if ident not in seen:
            seen.add(ident)
            total += tensor.numel()
    return total


def _cut_short(path):
    """A file that begins as a zip archive (torch.save's format) but lacks its end, or is
    empty: a copy stopped part-way. torch's older format (a pickle) is never taken for one."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head == b"" or (head == b"PK\x03\x04" and not zipfile.is_zipfile(path))


def repair_interrupted_save(folder):
    """Mend what a kill in the middle of fairseq's checkpoint save leaves in a training
    ``folder``; returns the names of the files mended.

    fairseq writes a save's first file (``checkpoint<N>.pt``) through a temporary file and a
    rename, then *copies* it to ``checkpoint_best.pt``, ``checkpoint_last.pt`` (and
    ``checkpoint.best_*.pt``); a copy cut short leaves a truncated file, which would stop the
    resumed training, or be read later as the stage's best. Each truncated copy is replaced by
    the newest whole checkpoint of the folder (the save's first file, whose copy it was meant
    to be), or removed where there is none (the stage then trains from its start)."""
    folder = Path(folder)
    files = [p for p in folder.glob("checkpoint*.pt") if p.is_file()]
    copies = ("checkpoint_best.pt", "checkpoint_last.pt")
    broken = [
        p
        for p in files
        if (p.name in copies or p.name.startswith("checkpoint.best_")) and _cut_short(p)
    ]
    whole = sorted((p for p in files if p not in broken), key=lambda p: p.stat().st_mtime_ns)
    for path in broken:
        if whole:
            partial = partial_path(path)
            shutil.copyfile(whole[-1], partial)
            publish(partial, path)
            logger.warning(
                "%s was truncated (a save cut short); replaced by %s", path, whole[-1].name
            )
        else:
            path.unlink()
            logger.warning("%s was truncated (a save cut short) and removed", path)
    return sorted(p.name for p in broken)
