"""A progress bar for the command-line tools: tqdm when it is installed, else a plain one-line bar."""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


class Progress:
    """A progress bar on stderr: tqdm when it is installed, else a plain one-line bar."""

    def __init__(self, total: Optional[int], desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled, self.n = total, desc, enabled, 0
        self._tqdm = None
        if enabled:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm(total=total, desc=desc, unit="frame", file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.update(n)
        elif self.total:
            filled = int(30 * min(self.n, self.total) / self.total)
            sys.stderr.write(f"\r{self.desc}: [{'#' * filled}{'.' * (30 - filled)}] {self.n}/{self.total}")
            sys.stderr.flush()
        else:
            sys.stderr.write(f"\r{self.desc}: {self.n} frames")
            sys.stderr.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled:
            sys.stderr.write("\n")
        self.enabled = False


def progress(items: Iterable[T], total: Optional[int], desc: str, enabled: bool = True) -> Iterator[T]:
    """``items`` with a :class:`Progress` bar advancing per item."""
    bar = Progress(total, desc, enabled)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()
