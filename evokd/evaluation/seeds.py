"""Is one stage better than another across training runs? Paired statistics over seeds.

A paired bootstrap on one test set (:mod:`evokd.evaluation.significance`) measures how much
a score moves with the test sentences drawn, for two fixed models; it says nothing of how
much it moves when the models are trained again with another seed. Here each seed gives
one pair of scores (system, baseline), trained with the same seed, and the unit of the
test is the seed:

- ``differences``: system minus baseline, per seed; ``mean`` and ``sd`` (sample standard
  deviation, n - 1) of them;
- ``ci``: the 95% confidence interval of the mean difference, Student's t with n - 1
  degrees of freedom: ``mean ± t(0.975, n - 1) * sd / sqrt(n)``;
- ``t``, ``t_p``: the paired t-test (:func:`scipy.stats.ttest_rel`, two-sided);
- ``wilcoxon``, ``wilcoxon_p``: the Wilcoxon signed-rank test
  (:func:`scipy.stats.wilcoxon`, two-sided, exact for these sizes). It assumes no normal
  distribution, and pays for it: with n seeds the smallest two-sided p it can give is
  ``2 / 2**n`` (0.125 with 4 seeds, 0.0625 with 5), so below 6 seeds it never reaches
  0.05 however large the difference (``wilcoxon_min_p``).

With five seeds or fewer both tests have little power: a true mean difference of one
standard deviation of the per-seed differences reaches p < 0.05 in the t-test 40% of the
time at n = 5 (29% at 4, 80% at 10). A wide interval that holds 0 says "not detected",
not "no difference".
"""

import math
import statistics


def across_seeds(system, baseline, confidence=0.95):
    """Paired statistics of ``system[i] - baseline[i]`` over seeds (see the module
    docstring). ``system`` and ``baseline``: one score per seed, in the same seed order.

    Returns a dict: ``n``, ``differences``, ``mean``, ``sd``, ``ci`` ([low, high]),
    ``t``, ``t_p``, ``wilcoxon``, ``wilcoxon_p`` and ``wilcoxon_min_p``; the statistics
    that need two seeds (all but ``differences`` and ``mean``) are None with one, and the
    tests are None when every difference is the same (no spread to test against).
    """
    system, baseline = [float(x) for x in system], [float(x) for x in baseline]
    if len(system) != len(baseline):
        raise ValueError(f"{len(system)} system scores against {len(baseline)} baseline scores")
    if not system:
        raise ValueError("no seed has both scores")
    differences = [s - b for s, b in zip(system, baseline)]
    n = len(differences)
    out = {
        "n": n,
        "differences": differences,
        "mean": statistics.mean(differences),
        "sd": None,
        "ci": None,
        "t": None,
        "t_p": None,
        "wilcoxon": None,
        "wilcoxon_p": None,
        "wilcoxon_min_p": 2.0 / 2**n,
    }
    if n < 2:
        return out
    from scipy import stats

    sd = statistics.stdev(differences)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    out.update(sd=sd, ci=[out["mean"] - half, out["mean"] + half])
    if sd > 0:
        t = stats.ttest_rel(system, baseline)
        w = stats.wilcoxon(system, baseline, alternative="two-sided")
        out.update(
            t=float(t.statistic),
            t_p=float(t.pvalue),
            wilcoxon=float(w.statistic),
            wilcoxon_p=float(w.pvalue),
        )
    return out
