"""``evokd distill-data --engine ctranslate2``: a fairseq teacher decoded by CTranslate2.

The checkpoint is converted once (:func:`evokd.core.ct2.convert`, with the data's
dictionaries) into a cache of converted models::

    $EVOKD_CT2_CACHE, else $XDG_CACHE_HOME/evokd/ct2, else ~/.cache/evokd/ct2
        <checkpoint sha256[:24]>-<dictionaries sha256[:8]>-<quantization>-ct2-<version>/
            model.bin, shared_vocabulary.json or {source,target}_vocabulary.json, config.json
            evokd_ct2.json      what it was made from, and the sha256 of every other file

An entry is named after the checkpoint's *content*, so a checkpoint moved or copied finds its
conversion and a retrained one at the same path does not. It is built in
``NAME.partial-PID`` and renamed into place when complete: a killed conversion is never
reused (its folder is removed by the next conversion of the same entry), and of two
processes converting at once the second keeps the first's. Before an entry is reused its
files are checked against ``evokd_ct2.json``; a damaged one is converted again.

Decoding reads the source pieces of the binarized data (the model's vocabulary is the
data's dictionary, so no detokenization, no text) and runs CTranslate2's beam search with
fairseq-generate's settings: the same batches, beam, length penalty, at least one token, and
at most ``min(int(max_len_a * S + max_len_b), max positions - 1)`` tokens for a batch whose
longest source has S tokens with its end of sentence (fairseq's rule). Its output pieces are
mapped back to the dictionary's ids, plus the end of sentence, as fairseq's would be.
"""

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from evokd import files
from evokd.core.ct2 import MODEL_FILE, check_quantization, convert, require_ctranslate2
from evokd.data.folder import dictionary_path
from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

CACHE_ENV = "EVOKD_CT2_CACHE"
RECORD = "evokd_ct2.json"
FORMAT = "evokd-ct2-model/1"
ENGINES = ("fairseq", "ctranslate2")
# What CTranslate2 runs on every CPU (ctranslate2.get_supported_compute_types("cpu")).
CPU_QUANTIZATIONS = ("float32", "int8", "int8_float32")
NEEDED_BY = "--engine ctranslate2"


def cache_root():
    """Where converted models are kept (see the module doc)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "evokd" / "ct2"


def default_engine():
    """The engine of a fairseq teacher when none is named: ``ctranslate2`` where it is
    installed (in float32 it writes fairseq's lines, faster: docs/benchmarks.md, "Distilled
    data through CTranslate2"), else ``fairseq``."""
    import importlib.util

    return "ctranslate2" if importlib.util.find_spec("ctranslate2") else "fairseq"


def check_engine(engine, quantization):
    """Fail naming the flag unless ``engine`` and ``quantization`` are known; the
    ``ctranslate2`` module (or None for fairseq), else an error saying how to install it."""
    if engine not in ENGINES:
        raise EvokdError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    check_quantization(quantization, "--ct2-quantization")
    return require_ctranslate2(NEEDED_BY) if engine == "ctranslate2" else None


def dictionaries_digest(data, src, tgt):
    """sha256 of the data's source and target dictionaries (the converted vocabularies)."""
    digest = hashlib.sha256()
    for lang in (src, tgt):
        digest.update(files.file_digest(dictionary_path(data, lang)).encode())
    return digest.hexdigest()


def _remove_dead_partials(root, name):
    """Remove ``name.partial-PID`` folders whose process is gone (a killed conversion)."""
    for path in root.glob(f"{name}.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _intact(folder, wanted):
    """Whether ``folder`` holds a complete conversion made from ``wanted`` (files checked)."""
    if not (folder / RECORD).is_file():
        return False
    record = files.read_json(folder / RECORD)
    if any(record.get(k) != v for k, v in wanted.items()):
        return False
    try:
        files.verify_payload(str(folder), folder, record[files.PAYLOAD])
    except EvokdError as exc:
        logger.warning("%s; converting the checkpoint again", exc)
        return False
    return True


def converted_model(checkpoint, checkpoint_sha256, data, src, tgt, quantization, cache=None):
    """The CTranslate2 model of ``checkpoint`` (whose dictionaries the caller has checked
    against ``data``'s) in ``quantization``, from the cache or converted now. Returns (its
    folder, its record, the seconds converting took or None when reused)."""
    ctranslate2 = require_ctranslate2(NEEDED_BY)
    dict_sha256 = dictionaries_digest(data, src, tgt)
    wanted = {
        "format": FORMAT,
        "checkpoint_sha256": checkpoint_sha256,
        "dictionaries_sha256": dict_sha256,
        "quantization": quantization,
        "ctranslate2": ctranslate2.__version__,
    }
    root = Path(cache) if cache is not None else cache_root()
    name = (
        f"{checkpoint_sha256[:24]}-{dict_sha256[:8]}-{quantization}-ct2-{ctranslate2.__version__}"
    )
    folder = root / name
    if _intact(folder, wanted):
        logger.info("CTranslate2 %s model of %s: reusing %s", quantization, checkpoint, folder)
        return folder, files.read_json(folder / RECORD), None
    from evokd.core.checkpoint import load_checkpoint

    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(root, name)
    partial = root / f"{name}.partial-{os.getpid()}"
    args = convert(checkpoint, load_checkpoint(str(checkpoint), "--teacher"), data, src, tgt,
                   partial, quantization)  # fmt: skip
    record = dict(
        wanted,
        checkpoint=str(Path(checkpoint).resolve()),
        architecture=args.arch,
        data=str(Path(data).resolve()),
        source_lang=src,
        target_lang=tgt,
        model_sha256=files.file_digest(partial / MODEL_FILE),
    )
    record[files.PAYLOAD] = files.payload_digests(partial, skip=(RECORD,))
    files.write_json(partial / RECORD, record)
    if folder.exists():  # damaged, or converted from other settings: replaced
        shutil.rmtree(folder, ignore_errors=True)
    try:
        files.publish(partial, folder)
    except OSError:  # another process published it meanwhile: keep theirs
        shutil.rmtree(partial, ignore_errors=True)
        if not _intact(folder, wanted):
            raise
        return folder, files.read_json(folder / RECORD), None
    seconds = time.perf_counter() - start
    logger.info(
        "CTranslate2 %s model of %s: %s (%.1f s)", quantization, checkpoint, folder, seconds
    )
    return folder, record, seconds


def ct2_device(cpu, rank=0):
    """(device, index) for CTranslate2: GPU ``rank`` modulo the GPUs unless ``cpu`` or none."""
    import ctranslate2

    count = 0 if cpu else ctranslate2.get_cuda_device_count()
    return ("cuda", rank % count) if count else ("cpu", 0)


class CT2Decoder:
    """CTranslate2's beam search over the source side of ``subset`` of ``data`` with
    fairseq-generate's settings (see the module doc); called with a chunk's batches it gives
    what :func:`evokd.distill.seqkd.write_chunk` saves."""

    def __init__(self, model_dir, data, subset, pair, decoding, max_positions, cpu, rank=0):
        import ctranslate2
        import torch
        from fairseq.data import Dictionary, data_utils

        src, tgt = pair.split("-")
        self.src_dict = Dictionary.load(str(dictionary_path(data, src)))
        self.tgt_dict = Dictionary.load(str(dictionary_path(data, tgt)))
        prefix = Path(data) / f"{subset}.{pair}.{src}"
        self.sources = data_utils.load_indexed_dataset(str(prefix), self.src_dict)
        self.sizes = np.array(self.sources.sizes, dtype=np.int64)
        self.decoding, self.max_positions = decoding, max_positions
        self.device, index = ct2_device(cpu, rank)
        threads = torch.get_num_threads()  # the one thread policy (evokd.core.build)
        self.translator = ctranslate2.Translator(
            str(model_dir), device=self.device, device_index=index, inter_threads=1,
            intra_threads=threads,
        )  # fmt: skip

    def pieces(self, example):
        """The source pieces of ``example``, without the end of sentence (CTranslate2 adds it)."""
        tokens = self.sources[int(example)].tolist()
        if not tokens or tokens[-1] != self.src_dict.eos():
            raise EvokdError(f"source sentence {example}: does not end with </s>")
        return [self.src_dict[i] for i in tokens[:-1]]

    def max_len(self, batch):
        """fairseq's length limit of a batch: A x its longest source (with EOS) + B."""
        longest = int(self.sizes[np.asarray(batch, dtype=np.int64)].max())
        d = self.decoding
        return min(int(d["max_len_a"] * longest + d["max_len_b"]), self.max_positions - 1)

    def ids(self, example, pieces):
        """Target pieces as the dictionary's ids, plus the end of sentence."""
        ids = [self.tgt_dict.index(p) for p in pieces]
        unknown = [p for p, i in zip(pieces, ids) if i == self.tgt_dict.unk() and p != "<unk>"]
        if unknown:
            raise EvokdError(
                f"sentence {example}: CTranslate2 wrote pieces outside the dictionary "
                f"({unknown[:3]}); the converted model is damaged"
            )
        return np.array(ids + [self.tgt_dict.eos()], dtype=np.int32)

    def search(self, batch):
        """CTranslate2's beam search over the examples of ``batch``: (their source pieces,
        its results with the whole final beam, the batch's length limit)."""
        sources = [self.pieces(i) for i in batch]
        max_len = self.max_len(batch)
        results = self.translator.translate_batch(
            sources,
            beam_size=self.decoding["beam"],
            num_hypotheses=self.decoding["beam"],
            length_penalty=self.decoding["lenpen"],
            max_decoding_length=max_len,
            min_decoding_length=1,
            max_input_length=0,  # never cut: too long a source is an error before
            max_batch_size=0,  # the batch as planned
            return_scores=True,
        )
        return sources, results, max_len

    def __call__(self, batches):
        start = time.perf_counter()
        items = []
        for batch in batches:
            sources, results, max_len = self.search(batch)
            for example, (pieces, score) in zip(batch, self.best(sources, results, max_len)):
                items.append((int(example), self.ids(example, pieces), score))
        return [i for i, _, _ in items], (items, time.perf_counter() - start)

    def best(self, sources, results, max_len):
        """Each sentence's hypothesis that fairseq would choose: the highest log-probability,
        end of sentence included, divided by (length + 1) ** lenpen.

        CTranslate2 ranks its final beam by the same score, except for a hypothesis cut at
        the length limit: it has no end of sentence to pay for, while fairseq forces one
        there. So only a sentence with a hypothesis at the limit has its final beam scored
        again, end of sentence included (scoring every sentence's beam took 2.5 times as
        long as the beam search itself on the demo's senior teacher)."""
        chosen = [(r.hypotheses[0], r.scores[0]) for r in results]
        cut = [k for k, r in enumerate(results) if any(len(h) >= max_len for h in r.hypotheses)]
        flat = [(sources[k], h) for k in cut for h in results[k].hypotheses]
        if not flat:
            return chosen
        scored = self.translator.score_batch([s for s, _ in flat], [h for _, h in flat],
                                             max_input_length=0)  # fmt: skip
        lenpen, i = self.decoding["lenpen"], 0
        for k in cut:
            hypotheses = results[k].hypotheses
            n = len(hypotheses)
            scores = [sum(r.log_probs) / len(r.log_probs) ** lenpen for r in scored[i : i + n]]
            best = max(range(n), key=lambda j: scores[j])  # the first of equals, as sorted
            chosen[k] = (hypotheses[best], scores[best])
            i += n
        return chosen


def open_decoder(rank, model_dir, data, subset, pair, decoding, max_positions, cpu):
    """Process ``rank``'s compute function: the converted model loaded once, on its device."""
    return CT2Decoder(model_dir, data, subset, pair, decoding, max_positions, cpu, rank)
