"""Peak host memory of the benchmarked code: the process's resident set size while it runs."""
from __future__ import annotations

import resource
import threading
from typing import Optional


class RssPeak:
    """Peak resident set size (MiB) of this process while the context is open.

    On Linux the kernel's high-water mark (VmHWM) is reset on entry (``/proc/self/clear_refs``)
    and read on exit: exact, and no thread competes with the measured code for the GIL. Where
    that is not possible a thread samples the current RSS every ``interval_s`` (may miss short peaks).
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self.start_mib = 0.0
        self.method = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @staticmethod
    def _status_mib(key: str) -> Optional[float]:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024.0  # kB
        except (OSError, ValueError, IndexError):
            pass
        return None

    @classmethod
    def current_mib(cls) -> float:
        rss = cls._status_mib("VmRSS")
        if rss is not None:
            return rss
        # No /proc: the lifetime peak is the best there is.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    @staticmethod
    def _reset_high_water_mark() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self.current_mib())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RssPeak":
        self.start_mib = self.peak_mib = self.current_mib()
        if self._reset_high_water_mark() and self._status_mib("VmHWM") is not None:
            self.method = "VmHWM"
        else:
            self.method = "sampled"
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        hwm = self._status_mib("VmHWM") if self.method == "VmHWM" else None
        self.peak_mib = max(self.peak_mib, hwm if hwm is not None else 0.0, self.current_mib())
