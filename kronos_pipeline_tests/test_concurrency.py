"""How many models fit at once and how many threads each gets (``kronos_pipeline.concurrency``,
no Dagster)."""

from __future__ import annotations

import os

import pytest

from kronos_pipeline import concurrency


@pytest.mark.parametrize(
    ("cpus", "slots", "threads"),
    [(2, 1, 2), (2, 2, 1), (16, 4, 4), (16, 3, 5), (3, 8, 1), (8, 0, 8), (1, 1, 1)],
)
def test_threads_per_slot_divides_the_cpus_among_the_slots_and_never_gives_less_than_one(
    cpus, slots, threads
):
    assert concurrency.threads_per_slot(cpus, slots) == threads


def test_usable_cpus_counts_the_affinity_mask_not_the_machine(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert concurrency.usable_cpus() == 3


def test_usable_cpus_falls_back_to_the_cpu_count_without_an_affinity_api(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert concurrency.usable_cpus() == 6


@pytest.mark.parametrize(
    ("cpus", "devices", "threads_per_fit", "slots"),
    [(2, 0, 2, 1), (16, 0, 2, 8), (16, 0, 4, 4), (3, 0, 4, 1), (16, 2, 2, 2), (2, 8, 2, 8)],
)
def test_model_fitting_slots_are_one_per_device_else_the_cpus_over_the_threads_per_fit(
    cpus, devices, threads_per_fit, slots
):
    assert concurrency.model_fitting_slots(cpus, devices, threads_per_fit) == slots
