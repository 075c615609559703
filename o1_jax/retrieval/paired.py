"""Paired comparison of two evaluations over their common queries: is B's mean better than A's?

For each metric: the mean of the per-query differences B - A, a 95% percentile bootstrap
confidence interval of that mean (queries resampled with replacement), and the two-sided p-value of
a paired randomisation (sign-flip) test: under the null hypothesis that A and B are exchangeable,
each query's difference is as likely to have either sign. Both are seeded, so a comparison prints
the same numbers every time. With few queries and exact ties, the p-value's resolution is 1 / (n + 1)
of the number of resamples (`+1`: the observed statistic counts as one of them).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def common_queries(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]]) -> list[str]:
    return sorted(set(a) & set(b))


def compare(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]], metrics, *,
            resamples: int = 10_000, seed: int = 0) -> dict[str, dict[str, float]]:
    """{metric: {mean_a, mean_b, diff, ci_low, ci_high, p_value, n}} over the queries both have."""
    queries = common_queries(a, b)
    if not queries:
        raise ValueError("the two evaluations have no query in common")
    out = {}
    for metric in metrics:
        diffs = np.array([b[q][metric] - a[q][metric] for q in queries], np.float64)
        rng = np.random.default_rng(seed)
        boot = diffs[rng.integers(0, len(diffs), (resamples, len(diffs)))].mean(axis=1)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(resamples, len(diffs)))
        flipped = np.abs((signs * diffs).mean(axis=1))
        observed = abs(diffs.mean())
        # The 1e-12 keeps an observed statistic from beating its own sign-flipped copies by rounding.
        p_value = (1 + np.sum(flipped >= observed - 1e-12)) / (resamples + 1)
        out[metric] = {"mean_a": float(np.mean([a[q][metric] for q in queries])),
                       "mean_b": float(np.mean([b[q][metric] for q in queries])),
                       "diff": float(diffs.mean()), "ci_low": float(np.percentile(boot, 2.5)),
                       "ci_high": float(np.percentile(boot, 97.5)), "p_value": float(p_value), "n": len(queries)}
    return out


def format_comparison(name_a: str, name_b: str, result: Mapping[str, Mapping[str, float]]) -> str:
    lines = [f"B - A over {next(iter(result.values()))['n']} common queries; A = {name_a}, B = {name_b}",
             "| metric | A | B | B - A | 95% CI | p (paired randomisation) |", "| --- | ---: | ---: | ---: | --- | ---: |"]
    for metric, r in result.items():
        mark = " *" if r["p_value"] < 0.05 else ""
        lines.append(f"| {metric} | {r['mean_a']:.4f} | {r['mean_b']:.4f} | {r['diff']:+.4f} | "
                     f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p_value']:.4f}{mark} |")
    lines.append("* p < 0.05")
    return "\n".join(lines)
