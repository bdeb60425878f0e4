"""What the service benches share: the CPU time of a process group. Imported by the scripts
beside it (``python bench/X.py`` puts ``bench/`` on the path)."""

from __future__ import annotations

import os
from pathlib import Path


def group_cpu_seconds(pgid: int) -> float:
    """CPU time used so far by the live processes of a process group (Linux /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:  # pgrp; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
