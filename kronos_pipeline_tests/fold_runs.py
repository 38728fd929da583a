"""Materialize a fold in tests as the CLI does: its fitted assets on the fold's partition,
then its date-level assets over the fold's weekday partitions, one result for both."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from kronos_pipeline.defs.partitions import fold_partitions, weekdays_of


@dataclass
class FoldRun:
    """The runs of one fold; reads like one ``ExecuteInProcessResult``."""

    runs: list[dg.ExecuteInProcessResult]

    @property
    def success(self) -> bool:
        return all(r.success for r in self.runs)

    def get_asset_check_evaluations(self) -> list:
        return [e for r in self.runs for e in r.get_asset_check_evaluations()]

    def get_asset_materialization_events(self) -> list:
        return [e for r in self.runs for e in r.get_asset_materialization_events()]

    def asset_materializations_for_node(self, node: str) -> list:
        return [
            m
            for r in self.runs
            if node in {n.name for n in r.job_def.nodes_in_topological_order}
            for m in r.asset_materializations_for_node(node)
        ]


def materialize_fold(assets: list, fold: str, **kwargs) -> FoldRun:
    """``dg.materialize`` of ``assets`` for fold ``fold``: fold-partitioned ones on its key,
    the rest over the weekdays of its month (stops after a failed run, like a job)."""
    fitted = [a for a in assets if a.partitions_def == fold_partitions]
    dated = [a for a in assets if a not in fitted]
    runs = []
    if fitted:
        runs.append(dg.materialize(fitted, partition_key=fold, raise_on_error=False, **kwargs))
    if dated and all(r.success for r in runs):
        first, last = weekdays_of(fold)
        tags = {"dagster/asset_partition_range_start": first,
                "dagster/asset_partition_range_end": last}  # fmt: skip
        runs.append(dg.materialize(dated, tags=tags, raise_on_error=False, **kwargs))
    return FoldRun(runs)
