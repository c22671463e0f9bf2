"""Average the weights of the newest epoch checkpoints, like fairseq's
``scripts/average_checkpoints.py --num-epoch-checkpoints N`` (which the ve-fairseq wheel
does not ship)."""

import logging
import re
from pathlib import Path

from evokd.core.checkpoint import (
    CheckpointError,
    architecture,
    load_raw,
    register_safe_globals,
)
from evokd.errors import EvokdError, check_number
from evokd.files import file_digest, publish

logger = logging.getLogger(__name__)

EPOCH_CHECKPOINT = re.compile(r"checkpoint(\d+)\.pt")  # as average_checkpoints.py matches them
AVERAGED_KEY = "evokd_averaged"  # what an averaged checkpoint records about its inputs


def last_epoch_checkpoints(folder, n):
    """The ``n`` newest ``checkpointE.pt`` in ``folder``, newest (highest epoch) first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvokdError(f"--average-last {n}: {folder}: no such folder of checkpoints")
    matches = ((EPOCH_CHECKPOINT.fullmatch(p.name), p) for p in folder.iterdir())
    found = sorted(((int(m.group(1)), p) for m, p in matches if m), reverse=True)
    if len(found) < n:
        names = ", ".join(p.name for _, p in found) or "none"
        raise EvokdError(
            f"--average-last {n}: {folder} holds {len(found)} epoch checkpoints "
            f"checkpointE.pt ({names}); need at least {n}"
        )
    return [path for _, path in found[:n]]


def average_checkpoints(paths):
    """The state of ``paths[0]`` with the model weights of all ``paths`` averaged.

    As fairseq's ``scripts/average_checkpoints.py``: every checkpoint must hold the same
    parameter names; fp16 tensors are averaged in fp32; integer tensors are floor-divided.
    """
    import torch

    summed, new_state = {}, None
    for path in paths:
        state = load_raw(path, "--average-last")
        params = state["model"]
        if new_state is None:
            new_state = state
        elif list(params) != list(summed) or any(
            params[k].shape != summed[k].shape for k in summed
        ):
            raise CheckpointError(
                f"--average-last: {path} does not hold the same parameters as {paths[0]} "
                f"(architectures {architecture(state)!r} and {architecture(new_state)!r})"
            )
        for key, tensor in params.items():
            if tensor.dtype == torch.float16:
                tensor = tensor.float()
            if key in summed:
                summed[key] += tensor
            else:
                summed[key] = tensor.clone()  # clone: the tensor may be tied to another
    for tensor in summed.values():
        if tensor.is_floating_point():
            tensor.div_(len(paths))
        else:
            tensor.floor_divide_(len(paths))
    new_state["model"] = type(new_state["model"])(summed)
    return new_state


def _fingerprint(path, known=None):
    """Name, size, mtime and sha256 of a file; the hash is reused from ``known`` when the
    size and mtime are unchanged."""
    stat = path.stat()
    found = {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if known and all(known.get(k) == v for k, v in found.items()):
        return dict(known)
    return {**found, "sha256": file_digest(path)}


def _recorded_inputs(path):
    """The inputs an earlier :func:`average_last_checkpoints` recorded in ``path``, or None."""
    import torch

    register_safe_globals()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return state[AVERAGED_KEY]["inputs"]
    except Exception:
        return None


def _check_reusable(output, inputs, n):
    """Fail unless ``output`` averages exactly the files ``inputs`` as they are now."""
    recorded = _recorded_inputs(output)
    if recorded is None:
        raise EvokdError(
            f"--average-last {n}: {output} exists and was not written by evokd evaluate "
            "--average-last; move it away"
        )
    names, current = [r["file"] for r in recorded], [p.name for p in inputs]
    if names == current and all(
        _fingerprint(p, r)["sha256"] == r["sha256"] for r, p in zip(recorded, inputs)
    ):
        return
    if names == current:
        what = f"was made from {', '.join(names)} before they were rewritten"
    else:
        what = f"averages {', '.join(names)}, not the newest {', '.join(current)}"
    raise EvokdError(
        f"--average-last {n}: {output} exists and {what}; move it away to average again"
    )


def average_last_checkpoints(checkpoint, n):
    """Average the ``n`` newest epoch checkpoints next to ``checkpoint`` (a file or folder).

    Writes ``averaged_last{n}.pt`` in that folder and returns its path. An existing file
    made from the same inputs is reused; one made from other inputs (or not by this
    function) is an error, never overwritten.
    """
    import torch

    check_number(n, "--average-last", 2)
    checkpoint = Path(checkpoint)
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    inputs = last_epoch_checkpoints(folder, n)
    output = folder / f"averaged_last{n}.pt"
    if output.exists():
        _check_reusable(output, inputs, n)
        logger.info(f"reusing {output}: averages {', '.join(p.name for p in inputs)}")
        return output
    logger.info(f"averaging {n} checkpoints: {', '.join(map(str, inputs))}")
    state = average_checkpoints(inputs)
    state[AVERAGED_KEY] = {"inputs": [_fingerprint(p) for p in inputs]}
    partial = output.with_name(output.name + ".partial")
    torch.save(state, partial)
    publish(partial, output)
    return output
