"""What every system of ``evokd bench-translate`` translates: the same sentences, batches
and length limits.

The source side of the binarized subset is read back as token lists (BPE pieces, ``<unk>``
included, no end of sentence), the input of CTranslate2. With fixed lengths every output
is exactly as long as its reference (in target BPE pieces; at least one): the sentences are
grouped by reference length into batches of at most ``batch_size``, longest source first
inside a length, the same batches for every engine.
"""

from evokd.deploy import engines, timing
from evokd.errors import EvokdError


def source_tokens(data, subset, src, tgt):
    """The source side of a binarized subset as token lists (BPE'd, no end of sentence)."""
    from fairseq.data import Dictionary

    from evokd.data.folder import dictionary_path, language_pair, load_side

    dictionary = Dictionary.load(str(dictionary_path(data, src)))
    side = load_side(data, subset, language_pair(data, subset, src, tgt, "--subset"), src)
    eos = dictionary.eos()
    return [[dictionary[i] for i in side[k].tolist() if i != eos] for k in range(len(side))]


def reference_lengths(data, subset, src, tgt):
    """Target length of every pair of a binarized subset, in BPE pieces (no end of
    sentence), at least 1."""
    from pathlib import Path

    from evokd.data.folder import language_pair, load_side

    pair = language_pair(data, subset, src, tgt, "--subset")
    if not (Path(data) / f"{subset}.{pair}.{tgt}.idx").is_file():
        raise EvokdError(
            f"--fixed-length needs the references: {data} has no {subset}.{src}-{tgt}.{tgt}.idx"
        )
    side = load_side(data, subset, pair, tgt)
    sizes = side.sizes.tolist()  # a view of the memory map: copied while ``side`` holds it open
    return [max(1, n - 1) for n in sizes]


def fixed_length_batches(lengths, source_lengths, batch_size):
    """Sentence ids grouped by reference length, longest source first inside a length,
    cut into batches of at most ``batch_size``: a list of (length, ids)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], -source_lengths[i], i))
    batches = []
    for i in order:
        if batches and batches[-1][0] == lengths[i] and len(batches[-1][1]) < batch_size:
            batches[-1][1].append(i)
        else:
            batches.append((lengths[i], [i]))
    return batches


class Workload:
    """The settings of one bench-translate run, and the systems' translation calls: each
    call takes sentence ids and returns (hypothesis token lists, seconds)."""

    def __init__(self, data, subset, src, tgt, *, batch_size, max_len, threads, device,
                 latency_sentences=0):  # fmt: skip
        self.data, self.subset, self.src, self.tgt = data, subset, src, tgt
        self.batch_size, self.max_len = batch_size, max_len
        self.threads, self.device = threads, device
        self.source = source_tokens(data, subset, src, tgt)
        self.latency_ids = list(range(min(latency_sentences, len(self.source))))
        self.lengths = None  # reference lengths, with fixed_length
        self.batches = None  # with fixed_length: (length, ids), the same for every system

    def fix_lengths(self):
        """Force every output to its reference's length from now on."""
        self.lengths = reference_lengths(self.data, self.subset, self.src, self.tgt)
        sources = [len(s) for s in self.source]
        self.batches = fixed_length_batches(self.lengths, sources, self.batch_size)

    def limits(self, ids):
        """(min_len, max_len) for a batch of sentences."""
        if self.lengths is None:
            return 1, self.max_len
        (length,) = {self.lengths[i] for i in ids}
        return length, length

    def fairseq_call(self, translator):
        def call(ids):
            low, high = self.limits(ids)
            return engines.translate_fairseq(translator, ids, max_len=high, min_len=low)

        return call

    def ct2_call(self, translator, beam, use_vmap=False):
        def call(ids):
            low, high = self.limits(ids)
            source = [self.source[i] for i in ids]
            return engines.translate_ct2(translator, source, beam=beam,
                                         batch_size=self.batch_size, max_len=high,
                                         min_len=low, use_vmap=use_vmap)  # fmt: skip

        return call

    def latency(self, call):
        """(median, 90th percentile) milliseconds over the latency sentences, or None."""
        return timing.latency(call, self.latency_ids) if self.latency_ids else None

    def batched(self, call, batches, profile=None):
        """Translate every batch with ``call``: (hypotheses by id, seconds)."""
        return timing.batched(call, batches, len(self.source), profile)
