"""Summary statistics of timed samples: median and p95 as the benchmark tables print them."""
from __future__ import annotations

from typing import Dict, Sequence


def summarize(samples_ms: Sequence[float]) -> Dict[str, float]:
    """median, p95 (linear interpolation between order statistics), mean, min, max of ``samples_ms``."""
    if len(samples_ms) == 0:
        raise ValueError("no samples to summarise")
    s = sorted(float(x) for x in samples_ms)

    def quantile(q: float) -> float:
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return dict(median=quantile(0.5), p95=quantile(0.95), mean=sum(s) / len(s), min=s[0], max=s[-1])
