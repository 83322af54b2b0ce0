"""Progress for long runs, always on stderr (stdout is kept for results: tables, JSON).

On a terminal it is a rich bar. When stderr is not a terminal (a Slurm log, a pipe, a file), a bar
would be drawn only when it ends, so a plain line is printed instead when the run starts, every
`PLAIN_INTERVAL_S` seconds, and when it ends. Disabled, it does nothing, so callers never branch.
"""

from __future__ import annotations

import sys
import time

# Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL_S = 5.0


def stderr_console():
    """The rich console of status lines and progress: stderr, wide lines in logs."""
    from rich.console import Console

    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class RichBar:
    """Progress over `total` steps with custom text `fields` (shown as rich `columns` on a terminal,
    appended to the plain lines otherwise); does nothing when disabled."""

    def __init__(self, enabled: bool, label: str, total: int, columns: list, interval: float | None = None,
                 **fields):
        self.enabled = enabled
        self.label, self.total, self.done = label, total, 0
        self.fields = dict(fields)
        self.interval = PLAIN_INTERVAL_S if interval is None else interval
        self._bar = None
        if enabled:
            self._console = stderr_console()
            if self._console.is_terminal:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

                self._bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), *columns,
                                     console=self._console)
                self._task = self._bar.add_task(label, total=total, **fields)
            self._started = self._last = time.monotonic()

    def __enter__(self):
        if self.enabled:
            if self._bar is not None:
                self._bar.__enter__()
            else:
                self._line()
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self.done < self.total or exc[0] is not None:  # the final line, unless the last step printed it
            self._line()

    def step(self, advance: int = 1, **fields) -> None:
        if not self.enabled:
            return
        self.done += advance
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, **fields)
            return
        now = time.monotonic()
        if now - self._last >= self.interval or self.done >= self.total:
            self._line(now)

    def _line(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._last = now
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        extra = " ".join(str(v) for v in self.fields.values() if v not in (None, ""))
        self._console.print(f"{self.label}: {self.done}/{self.total}{share}{' ' + extra if extra else ''}, "
                            f"{now - self._started:.0f}s elapsed", highlight=False, soft_wrap=True)
