"""How many models fit at once on this machine, and how many CPU threads each one gets.

Plain Python, no Dagster: ``kronos-pipeline instance-setup`` writes the ``model_fitting`` pool's
limit to the instance (``kronos_pipeline.instance.set_pool_limits``), and the fitting assets
read it back to give LightGBM its share of the CPUs instead of all of them: two fits of two
OpenMP threads each on two cores slowed ``lightgbm_models`` 16x (244 s instead of 15 s).
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (a container's cpuset, ``taskset``),
    which can be fewer than ``os.cpu_count()``, the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS)
        return os.cpu_count() or 1


def threads_per_slot(cpus: int, slots: int) -> int:
    """Threads one step may use when ``slots`` steps share ``cpus`` CPUs:
    ``max(1, cpus // slots)`` (a pool of 0 or fewer slots counts as 1)."""
    return max(1, cpus // max(1, slots))


def model_fitting_slots(cpus: int, devices: int, threads_per_fit: int) -> int:
    """Models that fit at once: one per accelerator when there are any (``devices`` > 0),
    otherwise as many as ``cpus`` hold with ``threads_per_fit`` threads each, at least 1."""
    if devices > 0:
        return devices
    return max(1, cpus // max(1, threads_per_fit))


def cuda_devices() -> int:
    """CUDA devices visible to this process (``CUDA_VISIBLE_DEVICES`` applies), 0 without
    torch or CUDA."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
