"""The load-average check every bench script ends with: figures taken while other work ran are unreliable."""

from __future__ import annotations

import os


def load_at_start() -> float:
    """Print the 1-minute load average before the measurements, and return it for ``report_load``."""
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f} (cores: {os.cpu_count()})")
    return load


def report_load(load_start: float, warn_at_end: float) -> float:
    """Print the 1-minute load average now, and a warning when the machine was not idle; return it."""
    load_end = os.getloadavg()[0]
    print(f"load average at end: {load_end:.2f} (cores: {os.cpu_count()})")
    if load_start > 1.0 or load_end > warn_at_end:
        print(
            f"WARNING: other work was running on this {os.cpu_count()}-core machine (1-minute load average "
            f"{load_start:.2f} at start, {load_end:.2f} at end; expected under 1.0 and {warn_at_end}): "
            f"these figures are unreliable, run again on an idle machine"
        )
    return load_end
