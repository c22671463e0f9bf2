"""Is one stage better than another on the same test set? sacrebleu's paired bootstrap.

The test is sacrebleu's own (:class:`sacrebleu.significance.PairedTest` with
``test_type="bs"``, which replicates Moses' ``bootstrap-hypothesis-difference-significance.pl``):
both systems are scored on the same ``n_samples`` resamples of the test sentences.
What it gives, per metric:

- ``baseline``, ``system``: the scores on the whole test set, and ``difference``
  (system minus baseline);
- ``system_mean`` and ``system_ci``: the mean of the system's resampled scores and the
  half-width of their 95% interval (sacrebleu's ``mean ± ci``; likewise ``baseline_mean``
  and ``baseline_ci``). sacrebleu gives the interval of each system's score, not of the
  difference;
- ``p_value``: the share of resamples whose centred difference is at least the observed
  one (sacrebleu's, with the +1 correction): small means the difference is unlikely to be
  chance.

The metrics are those of :mod:`evokd.core.metrics`: ``bleu`` is tokenized BLEU (the
paper's: lowercased Moses-tokenized text, ``tokenize="none"``), ``sacrebleu`` and ``chrf``
score the detokenized output against the raw references, case-insensitively.
"""

import contextlib
import json
import logging
import os
from pathlib import Path

from evokd.core.metrics import metric as build_metric
from evokd.data.layout import existing_text, read_metadata
from evokd.errors import EvokdError

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("bleu", "chrf")


@contextlib.contextmanager
def _sacrebleu_seed(seed):
    """sacrebleu reads its bootstrap seed from ``SACREBLEU_SEED`` (None: unseeded); its
    progress messages (one per metric and system) are kept out of the chain's log."""
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = "none" if seed is None else str(seed)
    sacrelogger = logging.getLogger("sacrebleu")
    level = sacrelogger.level
    sacrelogger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        sacrelogger.setLevel(level)
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old


def _check_inputs(baseline_hyps, system_hyps, refs, n_samples, seed):
    if not (len(baseline_hyps) == len(system_hyps) == len(refs)):
        raise ValueError(
            f"paired test: {len(baseline_hyps)} baseline and {len(system_hyps)} system "
            f"hypotheses for {len(refs)} references; they must be aligned line by line"
        )
    if not refs:
        raise ValueError("paired test: no sentences")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples {n_samples!r}: expected a positive integer")
    if seed is not None and (not isinstance(seed, int) or seed <= 0):
        # sacrebleu treats a seed of 0 as "unseeded" in one place and as 0 in another
        raise ValueError(f"seed {seed!r}: expected a positive integer, or None for unseeded")


def paired_bootstrap(baseline_hyps, system_hyps, refs, metric, n_samples=1000, seed=12345):
    """sacrebleu's paired bootstrap resampling of one metric (a sacrebleu ``Metric``).

    Returns a dict: ``metric`` (sacrebleu's name, e.g. ``BLEU``, ``chrF2``), ``signature``
    (with the test's ``bs`` and ``seed``), ``baseline``, ``system``, ``difference``
    (system - baseline), ``baseline_mean``, ``baseline_ci``, ``system_mean``,
    ``system_ci`` (95% half-widths, see the module docstring), ``system_interval``
    ``[system_mean - system_ci, system_mean + system_ci]``, ``p_value``, ``n_samples``,
    ``seed`` and ``n_sentences``.
    """
    from sacrebleu.significance import PairedTest

    baseline_hyps, system_hyps, refs = list(baseline_hyps), list(system_hyps), list(refs)
    _check_inputs(baseline_hyps, system_hyps, refs, n_samples, seed)
    systems = [("baseline", baseline_hyps), ("system", system_hyps)]
    with _sacrebleu_seed(seed):
        test = PairedTest(
            systems, {"metric": metric}, references=[refs], test_type="bs", n_samples=n_samples
        )
        signatures, scores = test()
    (name,) = signatures
    base, system = scores[name]
    return {
        "metric": name,
        "signature": signatures[name].format(),
        "baseline": float(base.score),
        "system": float(system.score),
        "difference": float(system.score - base.score),
        "baseline_mean": float(base.mean),
        "baseline_ci": float(base.ci),
        "system_mean": float(system.mean),
        "system_ci": float(system.ci),
        "system_interval": [float(system.mean - system.ci), float(system.mean + system.ci)],
        "p_value": float(system.p_value),
        "n_samples": n_samples,
        "seed": seed,
        "n_sentences": len(refs),
    }


def compare(
    baseline_hyps,
    system_hyps,
    refs,
    tokenize="none",
    lowercase=False,
    n_samples=1000,
    seed=12345,
):
    """BLEU and chrF of two systems on the same references, with the paired bootstrap.

    ``tokenize``: sacrebleu's BLEU tokenizer (``none`` for tokenized text, the paper's
    BLEU; ``13a`` for sacreBLEU on raw text); ``lowercase`` applies to both metrics.
    Returns ``{"bleu": result, "chrf": result}``, each as :func:`paired_bootstrap`.
    """
    metrics = {
        "bleu": build_metric("bleu", tokenize=tokenize, lowercase=lowercase),
        "chrf": build_metric("chrf", lowercase=lowercase),
    }
    return {
        key: paired_bootstrap(baseline_hyps, system_hyps, refs, metric, n_samples, seed)
        for key, metric in metrics.items()
    }


# --- evaluations written by evokd evaluate ----------------------------------------------------


def load_evaluation(evaluation):
    """An :func:`evokd.evaluation.evaluate.evaluate_checkpoint` result: the dict itself, its
    JSON file, or a folder holding exactly one such JSON."""
    if isinstance(evaluation, dict):
        return evaluation
    path = Path(evaluation)
    if path.is_dir():
        found = [p for p in sorted(path.glob("*.json")) if _is_evaluation(p)]
        if len(found) != 1:
            raise ValueError(f"{path}: expected one evaluation JSON, found {len(found)}")
        path = found[0]
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _is_evaluation(path):
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "hypotheses_tok" in record


def _read(path):
    from evokd.data.textio import read_lines

    return list(read_lines(path))


def _raw_references(evaluation):
    """The raw references that sacreBLEU and chrF were computed against, or None."""
    if evaluation.get("ref_file"):
        return evaluation["ref_file"]
    if evaluation.get("chrf") is None or not evaluation.get("subset"):
        return None
    try:
        tgt = read_metadata(evaluation["data"])["tgt"]
    except EvokdError:  # not a folder made by evokd prepare: no raw references
        return None
    return existing_text(evaluation["data"], evaluation["subset"], tgt, "raw")


def _inputs(evaluation, metric):
    """(hypotheses file, references file or None) that ``metric`` was computed from."""
    if metric == "bleu":
        return evaluation["hypotheses_tok"], evaluation["references"]
    return evaluation["hypotheses"], _raw_references(evaluation)


def compare_evaluations(baseline, system, metrics=DEFAULT_METRICS, n_samples=1000, seed=12345):
    """Paired bootstrap of two evaluations of the same test set (dicts, JSON files or folders,
    see :func:`load_evaluation`), from the hypothesis files they wrote.

    ``metrics``: any of ``bleu`` (tokenized), ``sacrebleu``, ``chrf``; one without raw
    references is left out. Returns ``{metric: result}``, each as :func:`paired_bootstrap`.
    """
    baseline, system = load_evaluation(baseline), load_evaluation(system)
    for key in ("data", "subset", "src_file", "ref_file", "n_sentences"):
        if baseline.get(key) != system.get(key):
            raise ValueError(
                f"paired test: the evaluations differ in {key} ({baseline.get(key)!r} and "
                f"{system.get(key)!r}); both systems must translate the same test set"
            )
    results = {}
    for name in metrics:
        base_hyps, refs = _inputs(baseline, name)
        sys_hyps, sys_refs = _inputs(system, name)
        if refs is None or sys_refs is None:
            logger.info("paired test: no raw references, %s skipped", name)
            continue
        results[name] = paired_bootstrap(
            _read(base_hyps), _read(sys_hyps), _read(refs), build_metric(name), n_samples, seed
        )
    return results


def compare_stages(evaluations, pairs, metrics=DEFAULT_METRICS, n_samples=1000, seed=12345):
    """The significance rows of a report: one per (pair, metric).

    ``evaluations``: stage name -> evaluation (see :func:`load_evaluation`); ``pairs``:
    (system, baseline) names, e.g. from :func:`evokd.chain.results.default_pairs`; a pair
    with a stage not evaluated is left out. Each row is a :func:`paired_bootstrap` result
    plus ``system_stage``, ``baseline_stage`` and ``key`` (``bleu``, ``sacrebleu`` or ``chrf``).
    """
    rows = []
    for system, baseline in pairs:
        if evaluations.get(system) is None or evaluations.get(baseline) is None:
            logger.info("paired test: %s against %s: not both evaluated, skipped", system, baseline)
            continue
        found = compare_evaluations(
            evaluations[baseline], evaluations[system], metrics, n_samples, seed
        )
        for key, result in found.items():
            rows.append({"system_stage": system, "baseline_stage": baseline, "key": key, **result})
    return rows
