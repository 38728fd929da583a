"""A day's score step finds its day in its fold even when the folds table predates it: under
automation the day's scores can run before the folds are rebuilt that night."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import polars as pl

from kronos_pipeline.defs.walkforward import run_folds
from kronos_pipeline.evaluation import folds
from kronos_pipeline.warehouse import Warehouse


def test_a_day_after_the_folds_were_built_is_scored_in_its_fold(tmp_path):
    sessions = pd.bdate_range("2019-06-03", "2019-12-04")
    db = Warehouse(tmp_path / "lake")
    built = folds.make_folds(sessions[:-1], "2019-11", None, [5])  # the night before: to 12-03
    db.replace_table("folds", pl.from_pandas(folds.folds_to_frame(built)))
    db.replace_table("universe", pl.DataFrame({"date": list(sessions.date), "ticker": "AAA"}))
    assert folds.folds_from_frame(db.read("select * from folds").to_pandas())[-1].test_end == (
        pd.Timestamp("2019-12-03")
    )
    for key in ("2019-12-04", "2019-12-03"):
        context = dg.build_asset_context(partition_key=key)
        start, end, plan = run_folds(context, db, "weekly")
        assert [(f.fold_id, [d.date().isoformat() for d in days]) for f, days in plan] == [
            ("2019-12", [key])  # one day: scored whatever the cadence
        ]
    context = dg.build_asset_context(
        partition_key_range=dg.PartitionKeyRange("2019-12-02", "2019-12-04")
    )
    _, _, plan = run_folds(context, db, "daily")
    assert [d.date().isoformat() for d in plan[0][1]] == ["2019-12-02", "2019-12-03", "2019-12-04"]
