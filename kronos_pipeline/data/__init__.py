"""Vendor readers, quarantine rules, point-in-time adjustment, trading calendar, synthetic market.

Pure library code: nothing here knows about Dagster.
"""
