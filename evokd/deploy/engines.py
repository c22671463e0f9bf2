"""The two engines that ``evokd bench-translate`` times: fairseq in-process and CTranslate2.

fairseq translates through :class:`evokd.core.inference.Translator` (fairseq's own beam
search, decoding like fairseq-generate ``--lenpen 1 --max-len-a 0``); CTranslate2 through
``ctranslate2.Translator.translate_batch`` with the same beam, length penalty and length
limits. The thread policy is one for all: ``threads`` intra-op threads and no more
(in-process torch: :func:`evokd.core.devices.torch_threads`; fairseq-generate:
:func:`evokd.core.generate.generate`'s ``threads``; CTranslate2: ``intra_threads=threads,
inter_threads=1``). The device is the GPU for both engines when both see one (and not
``cpu``), else the CPU for both.
"""

import os
import time


def available_cores():
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def choose_device(cpu):
    """``cuda`` when torch (:func:`evokd.core.inference.choose_device`) and CTranslate2 both
    see a GPU and not ``cpu``, else ``cpu``."""
    import ctranslate2

    from evokd.core.inference import choose_device as torch_device

    if cpu or ctranslate2.get_cuda_device_count() == 0:
        return "cpu"
    return torch_device().type


def fairseq_translator(checkpoint, data, subset, beam, device, flag="--student"):
    """A :class:`evokd.core.inference.Translator` of ``checkpoint`` over ``subset``, decoding
    like fairseq-generate ``--beam beam --lenpen 1 --max-len-a 0 --min-len 1``; the
    length limits are set per call by :func:`translate_fairseq`."""
    import torch

    from evokd.core.inference import Translator

    decoding = {"beam": beam, "lenpen": 1.0, "max_len_a": 0, "min_len": 1}
    return Translator(str(checkpoint), str(data), subset, decoding, torch.device(device), flag)


def translate_fairseq(translator, ids, *, max_len, min_len=1):
    """The best hypotheses of sentences ``ids`` of the translator's subset, one batch.

    Returns (token-id lists without the end of sentence, in the order of ``ids``,
    seconds of :func:`evokd.core.inference.translate`). Outputs have ``min_len`` to ``max_len``
    tokens: fairseq's generator bans the end of sentence before ``min_len`` and forces it
    at ``max_len_a * source length + max_len_b`` (``max_len_a`` is 0).
    """
    import torch

    from evokd.core.inference import translate

    translator.generator.min_len, translator.generator.max_len_b = min_len, max_len
    start = time.perf_counter()
    with torch.inference_mode():
        by_id = {h.id: h.body.tolist() for h in translate(translator, [ids])}
    seconds = time.perf_counter() - start
    return [by_id[int(i)] for i in ids], seconds


def load_ct2(model_dir, threads, device="cpu"):
    """A CTranslate2 translator of ``model_dir`` on ``threads`` intra-op threads."""
    import ctranslate2

    return ctranslate2.Translator(
        str(model_dir), device=device, inter_threads=1, intra_threads=threads
    )


def translate_ct2(translator, source, *, beam, batch_size, max_len, min_len=1, use_vmap=False):
    """Translate token lists with a CTranslate2 translator.

    Returns (hypothesis token lists, seconds of ``translate_batch``). Outputs have
    ``min_len`` to ``max_len`` tokens, the end of sentence not counted. ``use_vmap``:
    restrict each batch's output to the model's shortlist (``vmap.txt``,
    :mod:`evokd.deploy.shortlist`).
    """
    start = time.perf_counter()
    results = translator.translate_batch(
        source,
        beam_size=beam,
        length_penalty=1.0,
        max_batch_size=batch_size,
        batch_type="examples",
        max_decoding_length=max_len,
        min_decoding_length=min_len,
        use_vmap=use_vmap,
    )
    return [r.hypotheses[0] for r in results], time.perf_counter() - start
