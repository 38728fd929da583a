"""Dagster wiring only: read inputs, call the library, write, attach metadata and checks."""
