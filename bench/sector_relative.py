"""LightGBM with and without the sector-relative features, on the same folds of a built
warehouse: how much of LightGBM's RankIC comes through the (not point-in-time) sector map.

Reads folds, features, universe and labels from the warehouse (run `kronos-pipeline full` first),
trains LightGBM per fold and horizon twice, identical but for the ``sector_rel_*`` inputs, scores
the fold's scoring dates and prints the median RankIC over all scored dates of each variant.

    .venv/bin/python bench/sector_relative.py --warehouse data/lake [--folds 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time

import numpy as np
import pandas as pd

from kronos_pipeline.evaluation import baselines, folds, metrics, tripwires
from kronos_pipeline.settings import load_settings
from kronos_pipeline.warehouse import Warehouse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--folds", type=int, default=None, help="spread over all (default: all)")
    parser.add_argument(
        "--threads", type=int, default=None, help="LightGBM threads (default: the settings')"
    )
    args = parser.parse_args()
    s = load_settings(environ={}, mode="full")
    threads = args.threads or s.lightgbm.num_threads
    db = Warehouse(args.warehouse)
    all_folds = folds.folds_from_frame(db.read("select * from folds").to_pandas())
    ids = tripwires.control_fold_ids([f.fold_id for f in all_folds], args.folds)
    chosen = [f for f in all_folds if f.fold_id in ids]
    started = time.perf_counter()
    rows = {True: [], False: []}
    for fold in chosen:
        feats = db.read(
            "select f.* from features f join universe u using (date, ticker) "
            "where u.in_universe and f.date between ? and ?",
            [fold.train_start.date(), fold.test_end.date()],
        ).to_pandas()
        labels = db.read(
            "select * from labels_forward where available_at < ?", [fold.test_start.date()]
        ).to_pandas()
        test_labels = db.read(
            "select * from labels_forward where date between ? and ?",
            [fold.test_start.date(), fold.test_end.date()],
        ).to_pandas()
        days = folds.scoring_dates(fold, feats["date"].unique(), s.folds.scoring_cadence)
        on_dates = feats[pd.to_datetime(feats["date"]).isin(days)]
        for use in (True, False):
            for h in s.labels.horizons:
                fit = baselines.train_lightgbm(
                    feats, labels, fold, h, on_dates, s.lightgbm, threads,
                    use_sector_relative=use,
                )  # fmt: skip
                rows[use].append(fit.scores)
        print(f"fold {fold.fold_id} done ({time.perf_counter() - started:.0f} s)", flush=True)
        rows.setdefault("labels", []).append(test_labels)
    labels = pd.concat(rows.pop("labels"), ignore_index=True)
    print(f"\n# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
          f"{len(chosen)} folds ({chosen[0].fold_id}..{chosen[-1].fold_id}), "
          f"{time.perf_counter() - started:.0f} s, LightGBM threads {threads}")  # fmt: skip
    print("| horizon | LightGBM median RankIC, with sector_rel_* | without | difference | dates |")
    print("|---|---|---|---|---|")
    per = {}
    for use, parts in rows.items():
        ev = metrics.eval_rows(pd.concat(parts, ignore_index=True), labels)
        per[use] = metrics.per_date_metrics(ev, s.costs.cost_bps)
    for h in s.labels.horizons:
        a = per[True][per[True]["horizon"] == h]["rank_ic"]
        b = per[False][per[False]["horizon"] == h]["rank_ic"]
        print(f"| {h} | {np.nanmedian(a):.4f} | {np.nanmedian(b):.4f} | "
              f"{np.nanmedian(a) - np.nanmedian(b):+.4f} | {a.notna().sum()} |")  # fmt: skip


if __name__ == "__main__":
    main()
