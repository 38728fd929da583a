"""The t-stats the report prints have the right size (SPEC section 5): on null RankIC series with
the pipeline's own overlap structure, |t| > 1.96 in about 5 % of draws.

A null RankIC series is drawn the way overlapping labels make it: a score that does not change
(the worst case for overlap, e.g. a slow factor) against h-day labels that are sums of h i.i.d.
daily cross-sectional shocks, so RankIC(t) = mean of the next h daily shocks and consecutive
scoring dates share all but ``spacing`` of their label days. Scores redrawn every date (no
persistence) give i.i.d. RankICs; both are checked.
"""

import zlib

import numpy as np
import pytest

from kronos_pipeline.evaluation import metrics as m

REPS = 700
SESSIONS = {"fold": 21, "smoke": 63, "year": 252, "full": 108 * 21}
CADENCES = {"daily": 1, "weekly": 5}


def _null_series(rng, sessions: int, horizon: int, spacing: int, persistent: bool) -> np.ndarray:
    if persistent:
        shocks = rng.standard_normal(sessions + horizon)
        ic = np.convolve(shocks, np.ones(horizon), "valid")[1 : sessions + 1] / np.sqrt(horizon)
    else:
        ic = rng.standard_normal(sessions)
    return 0.1 * ic[::spacing]


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent_score", "iid_score"])
@pytest.mark.parametrize("cadence", list(CADENCES))
@pytest.mark.parametrize("horizon", [20, 60, 90])
def test_printed_t_stats_have_size_near_five_percent(horizon, cadence, persistent):
    spacing = CADENCES[cadence]
    lag = m.newey_west_lag(horizon, spacing)
    checked = 0
    for length, sessions in SESSIONS.items():
        rng = np.random.default_rng(
            zlib.crc32(f"{horizon}/{cadence}/{persistent}/{length}".encode())
        )
        positions = np.arange(0, sessions, spacing)
        apart = m.non_overlapping_positions(positions, horizon)
        hac, non_overlap = [], []
        for _ in range(REPS):
            ic = _null_series(rng, sessions, horizon, spacing, persistent)
            hac.append(m.newey_west_t(ic, lag))
            non_overlap.append(m.non_overlapping_t(ic[apart]))
        for name, ts in (("HAC", np.array(hac)), ("non-overlapping", np.array(non_overlap))):
            printed = np.isfinite(ts)
            # The report prints a number for every draw or for none ("n/a"), never for some.
            assert printed.all() or not printed.any(), (name, length, printed.mean())
            if printed.any():
                checked += 1
                rate = float((np.abs(ts) > 1.96).mean())
                assert 0.02 <= rate <= 0.09, (
                    f"{name} t at h={horizon}, {cadence}, {length} ({len(ic)} dates, lag {lag}): "
                    f"false-positive rate {rate:.3f}"
                )
    assert checked >= 2  # at least the FULL-length HAC and non-overlapping t are numbers
