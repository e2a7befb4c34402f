"""Peak memory of a stretch of work (a stage): resident set size sampled by a background thread, and CUDA's
max allocated when torch runs on a GPU. Linux reads /proc/self/statm; elsewhere the process's lifetime
peak (`resource.getrusage`) is the best available bound.

    with PeakMemory() as peak:
        work()
    peak.rss_mb, peak.cuda_mb          # MiB; cuda_mb is None without CUDA
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

SAMPLE_SECONDS = 0.02
_STATM = Path("/proc/self/statm")


def current_rss_bytes() -> int:
    """This process's resident set size now (bytes); its lifetime peak where /proc is missing."""
    try:
        return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak_kib) * (1 if sys.platform == "darwin" else 1024)


class PeakMemory:
    """Context manager measuring the peak RSS (and CUDA max allocated) while it is open (module doc)."""

    def __init__(self, interval_s: float = SAMPLE_SECONDS) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.rss_mb = 0.0
        self.cuda_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        self.peak_bytes = current_rss_bytes()
        if _cuda():
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, name="st4r-peak-memory", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, current_rss_bytes())
        self.rss_mb = round(self.peak_bytes / 2**20, 1)
        if _cuda():
            import torch

            self.cuda_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _cuda() -> bool:
    """CUDA is in use: torch is imported (never imported here) and has a GPU."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())
