"""Progress bars (rich) for long runs: one base that is silent when disabled, so callers never branch."""

from __future__ import annotations


class RichBar:
    """A rich progress bar over `total` steps with custom text `fields`; does nothing when disabled."""

    def __init__(self, enabled: bool, label: str, total: int, columns: list, **fields):
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), *columns)
            self._task = self._bar.add_task(label, total=total, **fields)

    def __enter__(self):
        if self.enabled:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)

    def step(self, **fields) -> None:
        if self.enabled:
            self._bar.update(self._task, advance=1, **fields)
