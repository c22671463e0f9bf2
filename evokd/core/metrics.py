"""The one definition of evokd's translation scores, built with sacrebleu's API.

- ``bleu``: tokenized BLEU as the EKD paper reports it (like multi-bleu.perl and fairseq's
  BLEU4): lowercased, Moses-tokenized hypotheses and references, compared as they are
  (``BLEU(tokenize="none")``; the text is lowercased when it is prepared, not here);
- ``sacrebleu``: BLEU of Moses-detokenized hypotheses against the raw references with
  sacrebleu's own tokenizer, case-insensitive since the models write lowercase;
- ``chrf``: chrF on the same text as ``sacrebleu``, case-insensitive.

Every other module that scores translations (evaluation, the paired bootstrap, the
benchmark, MCKD's labels, MT-Patcher's feedback) builds its metric here.
"""

METRICS = ("bleu", "sacrebleu", "chrf")


def metric(name, tokenize=None, lowercase=None):
    """The sacrebleu metric behind one of evokd's scores.

    ``name``: ``bleu`` (tokenized BLEU), ``sacrebleu`` or ``chrf``; ``tokenize`` (BLEU's
    sacrebleu tokenizer) and ``lowercase`` override that score's defaults.
    """
    from sacrebleu.metrics import BLEU, CHRF

    if name == "bleu":
        tokenize = "none" if tokenize is None else tokenize
        return BLEU(tokenize=tokenize, lowercase=bool(lowercase), force=tokenize == "none")
    if name == "sacrebleu":
        return BLEU(lowercase=True if lowercase is None else lowercase, tokenize=tokenize)
    if name == "chrf":
        return CHRF(lowercase=True if lowercase is None else lowercase)
    raise ValueError(f"unknown metric {name!r} (expected one of {', '.join(METRICS)})")


def corpus_score(scorer, hyps, refs):
    """(score, signature) of ``scorer`` (a :func:`metric`) on one reference per hypothesis."""
    result = scorer.corpus_score(list(hyps), [list(refs)])
    return result.score, str(scorer.get_signature())


def sentence_chrf(hyp, ref):
    """chrF (sacrebleu's defaults: case-sensitive, 0-100) of one sentence against one."""
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(hyp, [ref]).score


def detokenize(lines, lang):
    """Moses-detokenize (and unescape ``&apos;`` etc.) tokenized lines of language ``lang``."""
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=lang)
    return [detok.detokenize(line.split(), return_str=True) for line in lines]


def score(hyps_tok, refs_tok, hyps_detok=None, refs_raw=None):
    """``bleu``, and ``sacrebleu`` and ``chrf`` when raw references are given, each with its
    ``*_signature``: a dict."""
    scores = {}
    todo = [("bleu", hyps_tok, refs_tok)]
    if refs_raw is not None:
        todo += [("sacrebleu", hyps_detok, refs_raw), ("chrf", hyps_detok, refs_raw)]
    for name, hyps, refs in todo:
        scores[name], scores[f"{name}_signature"] = corpus_score(metric(name), hyps, refs)
    return scores
