"""What the benchmarks read about their own memory: the process's resident set now and its peak."""
from __future__ import annotations

import os
import resource


def rss_mb() -> float:
    """The resident set size now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_mb() -> float:
    """The peak resident set size so far (``getrusage`` ru_maxrss, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
