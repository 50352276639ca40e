"""Progress bars for a run: one bar per stage, counting images, drawn on stderr.

The bars are drawn only when stderr is a terminal, so logs of batch jobs and piped runs
stay free of control characters.
"""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# Stage names as they appear in the bars and in ``stats.json`` timings.
STAGES = ("images", "cues", "synthesis", "format", "rules", "judge", "commit")
STAGE_LABELS = {
    "images": "load, objects, targets",
    "cues": "cues",
    "synthesis": "synthesis",
    "format": "format check",
    "rules": "rules",
    "judge": "visual judge",
    "commit": "commit",
}


class _RateColumn(ProgressColumn):
    """Images per second, averaged by rich over the last 30 seconds of updates."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("- img/s", style="progress.data.speed")
        return Text(f"{speed:,.1f} img/s", style="progress.data.speed")


def stderr_is_terminal() -> bool:
    """Return whether stderr is attached to a terminal."""
    return sys.stderr.isatty()


class StageProgress:
    """Per-stage progress of a run over ``total`` images, ``done`` of them from a resume.

    Args:
        total: images the run covers.
        done: images already processed by committed batches (shown as done at the start,
            and left out of the rate).
        enabled: draw the bars; when false every method does nothing.
    """

    def __init__(self, total: int, done: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._tasks: dict[str, TaskID] = {}
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description:<24}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeRemainingColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            for stage in STAGES:
                self._tasks[stage] = self._progress.add_task(
                    STAGE_LABELS[stage], total=total, completed=done
                )

    def __enter__(self) -> StageProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, stage: str, images: int) -> None:
        """Count ``images`` more images as through ``stage`` (one of :data:`STAGES`)."""
        if self._progress is not None:
            self._progress.advance(self._tasks[stage], images)
