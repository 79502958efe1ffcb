"""Statistics of eval scores: a Wilson interval for one score, a paired bootstrap for the change between two.

Both are 95% intervals. Wilson's suits pass rates near 0 or 1 and small suites, where the normal
approximation gives intervals past [0, 1]. The paired bootstrap resamples the cases both models were
scored on (``RESAMPLES`` times, seed ``SEED``, so the same results give the same interval) and takes
the 2.5th and 97.5th percentiles of the mean change per case (-1, 0 or +1).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal
RESAMPLES = 2000
SEED = 0


def wilson(passed: int, n: int, z: float = Z95) -> list[float]:
    """[lo, hi] of the pass rate ``passed / n``; [0, 1] when there is nothing to measure."""
    if n <= 0:
        return [0.0, 1.0]
    p = passed / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def paired_bootstrap(after: Sequence[bool], before: Sequence[bool], *, resamples: int = RESAMPLES,
                     seed: int = SEED) -> list[float] | None:
    """[lo, hi] of the mean change ``after - before`` over paired cases; None without any pair."""
    if len(after) != len(before):
        raise ValueError("the paired results differ in length")
    n = len(after)
    if n == 0:
        return None
    diffs = [int(a) - int(b) for a, b in zip(after, before, strict=True)]
    if not any(diffs):
        return [0.0, 0.0]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    lo = means[int(0.025 * resamples)]
    hi = means[min(resamples - 1, int(math.ceil(0.975 * resamples)) - 1)]
    return [round(lo, 4), round(hi, 4)]
