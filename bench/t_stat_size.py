"""Size of the report's t-stats: false-positive rate of |t| > 1.96 on simulated null RankIC
series with the pipeline's overlap structure, for the HAC t the report prints, the
non-overlapping t beside it, and the old Newey-West t (Bartlett kernel, lag h - 1 capped at
n - 1) side by side. Uses the same null series as the size test
(kronos_pipeline_tests/evaluation/test_t_stat_size.py); "n/a" where the report prints no number.

    PYTHONPATH=. .venv/bin/python bench/t_stat_size.py [--reps 2000]
"""

from __future__ import annotations

import argparse
import datetime as dt

import numpy as np
import statsmodels.api as sm

from kronos_pipeline.evaluation import metrics as m
from kronos_pipeline_tests.evaluation.test_t_stat_size import CADENCES, SESSIONS, _null_series


def old_newey_west_t(x: np.ndarray, horizon: int) -> float:
    """The t the report printed before: Bartlett kernel, lag h - 1 capped at n - 1."""
    n = len(x)
    fit = sm.OLS(x, np.ones((n, 1))).fit(
        cov_type="HAC", cov_kwds={"maxlags": int(min(horizon - 1, n - 1))}
    )
    return float(fit.tvalues[0])


def rate(ts: list[float]) -> str:
    t = np.asarray(ts)
    return "n/a" if not np.isfinite(t).any() else f"{(np.abs(t[np.isfinite(t)]) > 1.96).mean():.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args()
    print(f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {args.reps} null draws per row")
    print(
        "| score | cadence | h | length | dates | lag | old NW t | HAC t | non-overlap t (dates) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for persistent in (True, False):
        for cadence, spacing in CADENCES.items():
            for h in (20, 60, 90):
                lag = m.newey_west_lag(h, spacing)
                for length, sessions in SESSIONS.items():
                    rng = np.random.default_rng(1)
                    apart = m.non_overlapping_positions(np.arange(0, sessions, spacing), h)
                    old, new, non = [], [], []
                    for _ in range(args.reps):
                        ic = _null_series(rng, sessions, h, spacing, persistent)
                        old.append(old_newey_west_t(ic, h))
                        new.append(m.newey_west_t(ic, lag))
                        non.append(m.non_overlapping_t(ic[apart]))
                    kind = "persistent" if persistent else "i.i.d."
                    print(f"| {kind} | {cadence} | {h} | {length} | {len(ic)} | {lag} | "
                          f"{rate(old)} | {rate(new)} | {rate(non)} ({len(apart)}) |")  # fmt: skip


if __name__ == "__main__":
    main()
