"""Progress of a long run: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws itself with carriage returns, which fill a log file or a CI console with hundreds
of half-lines. When stderr is not a terminal each finished unit is one plain line instead
(``probes: probing digits: batch 3/5 done, 12.4 s``).
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class Progress:
    """``with Progress(desc, total, unit=...) as bar: ... bar.status(text); bar.advance()``."""

    def __init__(self, desc: str, total: int, done: int = 0, unit: str = "batch", enabled: bool = True,
                 stream=None):
        self.desc, self.total, self.done, self.unit = desc, total, done, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = None
        self.t0 = time.perf_counter()

    def __enter__(self) -> Progress:
        if self.enabled and self.terminal:
            self.bar = tqdm(total=self.total, initial=self.done, desc=self.desc, unit=self.unit, file=self.stream,
                            dynamic_ncols=True)
        return self

    def status(self, text: str) -> None:
        """What the current unit is doing (shown beside a terminal's bar; not logged otherwise)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            print(f"probes: {self.desc}: {self.unit} {self.done}/{self.total} done, "
                  f"{time.perf_counter() - self.t0:.1f} s", file=self.stream, flush=True)

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.close()
        return False
