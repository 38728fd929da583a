"""Walk-forward evaluation (SPEC sections 3 to 8): folds, baselines, metrics, tripwires, gates and
the report. Plain Python on pandas DataFrames; no Dagster here (the wiring lives in ``defs/``)."""
