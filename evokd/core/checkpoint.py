"""Loading fairseq checkpoints on torch >= 2.6, with errors that name the file.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``; fairseq stores an
``argparse.Namespace`` (the model config of legacy architectures) in every checkpoint, so
it has to be allow-listed once before any load. Standalone entry points that load
checkpoints before importing :mod:`evokd` call :func:`register_safe_globals` themselves.
"""

import argparse
import logging
import os

import torch

from evokd.errors import EvokdError

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
