"""Dagster wiring only: read inputs, call the library, write, attach metadata and checks.

The wiring uses a few features Dagster marks beta on purpose (``backfill_policy`` for ranged
runs, ``observable_source_asset`` for the vendor folder, schema-change checks, sources in the
automation sensor's selection); their ``BetaWarning`` would be printed by every process that
loads the code location, so it is silenced here, before any definition is built.
"""

import warnings

import dagster as dg

warnings.filterwarnings("ignore", category=dg.BetaWarning)
