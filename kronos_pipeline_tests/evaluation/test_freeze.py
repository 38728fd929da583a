"""A freeze keeps the baselines of one evaluation; later reports compare against it."""

import json

import pandas as pd
import pytest

from kronos_pipeline.evaluation import freeze


def _comparison(lgbm: float) -> pd.DataFrame:
    return pd.DataFrame({
        "model": ["lightgbm", "lightgbm", "kronos_small", "random"], "horizon": [20, 60, 20, 20],
        "n_dates": 63, "median_rank_ic": [lgbm, 0.07, 0.2, 0.001], "nw_t": [2.5, None, 1.0, 0.1],
    })  # fmt: skip


def test_freeze_keeps_baselines_only_and_later_runs_compare_against_it(tmp_path):
    folds = pd.DataFrame({"model": ["lightgbm", "kronos_small"], "horizon": 20,
                          "fold": "2019-12", "median_rank_ic": [0.05, 0.2]})  # fmt: skip
    paths = freeze.freeze(_comparison(0.06), folds, tmp_path / "frozen", {"mode": "full"})
    floor = json.loads(paths[freeze.FLOOR_FILE].read_text())
    assert {r["model"] for r in floor["floor"]} == {"lightgbm", "random"}
    assert floor["run"] == {"mode": "full"}
    assert [r["model"] for r in json.loads(paths[freeze.FOLDS_FILE].read_text())["folds"]] == [
        "lightgbm"
    ]
    loaded = freeze.load_floor(tmp_path / "frozen")
    table = freeze.against_floor(_comparison(0.04), loaded).set_index(["model", "horizon"])
    assert table.loc[("lightgbm", 20), "change"] == pytest.approx(-0.02)
    assert freeze.load_floor(tmp_path / "nothing") is None
    with pytest.raises(ValueError, match="no baseline"):
        freeze.freeze(_comparison(0.06).iloc[2:3], folds, tmp_path / "x", {})
