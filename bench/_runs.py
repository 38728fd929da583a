"""What the bench scripts that drive the CLI share: a timed subprocess and its step lines."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A CLI step line: "  ok   12.3s  job/step".
STEP = re.compile(r"^\s+(ok|FAILED|skipped)\s+([\d.]+)s\s+(\S+)$")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run ``cmd`` in the repository; its wall seconds and stdout (exits on failure)."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def steps(stdout: str) -> list[tuple[str, float]]:
    """``(job/step, seconds)`` of every step line the CLI printed."""
    return [(m.group(3), float(m.group(2))) for m in map(STEP.match, stdout.splitlines()) if m]
