"""Preprocessing against the reference predictor's own steps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kronos_pipeline.kronos.preprocessing import (
    FEATURE_COLUMNS,
    Normalizer,
    bars_array,
    prepare_window,
    time_features,
)
from kronos_pipeline_tests.kronos.conftest import make_bars


def _reference_arrays(df: pd.DataFrame, ts: pd.DatetimeIndex, clip: float = 5.0):
    """The reference's predict_batch preprocessing, replayed through its own helpers."""
    from kronos_finance._vendor.kronos_model.kronos import KronosPredictor, calc_time_stamps

    class _Probe(KronosPredictor):
        def __init__(self) -> None:
            self.max_context, self.clip = 512, clip
            self.price_cols = ["open", "high", "low", "close"]
            self.vol_col, self.amt_vol = "volume", "amount"

        def generate(self, x, x_stamp, y_stamp, *args):
            self.captured = (x, x_stamp)
            return np.zeros((x.shape[0], args[0], 6), dtype=np.float32)

    probe = _Probe()
    out = probe.predict_batch([df], [pd.Series(ts)], [pd.Series(ts[:3])], pred_len=3)
    stamps = calc_time_stamps(pd.Series(ts)).values.astype(np.float32)
    return probe.captured[0][0], probe.captured[1][0], stamps, out[0]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("columns", ["ohlcv", "ohlcva", "ohlc"])
def test_matches_reference_normalisation_and_fills(columns: str, dtype: str) -> None:
    windows, stamps, _ = make_bars(1, 80, 3, seed=3, with_amount=columns == "ohlcva")
    df = windows[0].astype(dtype)  # the derived amount keeps the precision of the inputs
    if columns == "ohlc":
        df = df.drop(columns=["volume"])
    df.loc[5, "close"] *= 40  # an outlier that the clip must catch
    ref_x, ref_stamp, ref_stamp_direct, ref_out = _reference_arrays(df, stamps[0])
    x, stamp, norm = prepare_window(df, stamps[0])
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(stamp, ref_stamp)
    np.testing.assert_array_equal(stamp, ref_stamp_direct)
    assert x.max() <= 5.0 and x.dtype == np.float32
    # Zero model output maps back to the window mean, exactly as in the reference.
    np.testing.assert_array_equal(norm.inverse(np.zeros((3, 6), np.float32)), ref_out.values)


def test_fills_volume_and_amount() -> None:
    df = pd.DataFrame(
        {"open": [1.0, 2.0], "high": [2.0, 3.0], "low": [0.5, 1.0], "close": [1.5, 2.0]}
    )
    np.testing.assert_array_equal(bars_array(df)[:, 4:], np.zeros((2, 2), np.float32))
    df["volume"] = [10.0, 20.0]
    expected_amount = np.array([10.0 * 1.25, 20.0 * 2.0], np.float32)
    np.testing.assert_allclose(bars_array(df)[:, 5], expected_amount)
    df["amount"] = [7.0, 8.0]
    np.testing.assert_array_equal(bars_array(df)[:, 5], np.array([7.0, 8.0], np.float32))


def test_errors_on_nan_missing_prices_and_length_mismatch() -> None:
    windows, stamps, _ = make_bars(1, 20, 1)
    bad = windows[0].copy()
    bad.loc[3, "low"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        prepare_window(bad, stamps[0])
    with pytest.raises(ValueError, match="price columns"):
        prepare_window(windows[0].drop(columns=["high"]), stamps[0])
    with pytest.raises(ValueError, match="timestamps"):
        prepare_window(windows[0], stamps[0][:-1])


def test_time_features_columns_and_units() -> None:
    ts = pd.DatetimeIndex(["2024-03-01 09:31", "2024-12-31 16:00"])
    expected = np.array([[31, 9, 4, 1, 3], [0, 16, 1, 31, 12]], np.float32)
    np.testing.assert_array_equal(time_features(ts), expected)
    np.testing.assert_array_equal(time_features(pd.Series(ts)), expected)


def test_normalizer_round_trip() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(100, 3, size=(50, 6)).astype(np.float32)
    norm = Normalizer.fit(x)
    y = norm.transform(x, clip=50.0)
    np.testing.assert_allclose(norm.inverse(y), x, rtol=1e-5)
    assert len(FEATURE_COLUMNS) == 6
