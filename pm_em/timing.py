"""Where a fit's time goes: named stages, timed only while a `record` is active.

The bottom layer of the package. Code marks its stages with ``with stage("name"):``; outside
a `record` that costs one context-variable lookup (well under a microsecond), so the marks
stay in place. The benchmark (``./dev bench --only speed``) prints the breakdown of a fit
on a new model from them::

    with pm_em.timing.record() as timings:
        pm_em.fit(model)
    print(timings.table())

Stages nest: a stage entered inside another is reported under it, and each stage's time
includes its children's.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["Timings", "record", "stage"]


@dataclass
class Timings:
    """Total seconds and counts per stage path, in the order stages were first entered.

    Attributes
    ----------
    seconds : dict of {tuple of str: float}
        Inclusive time per path (outermost stage first).
    counts : dict of {tuple of str: int}
        How many times each path was entered.
    """

    seconds: dict[tuple[str, ...], float] = field(default_factory=dict)
    counts: dict[tuple[str, ...], int] = field(default_factory=dict)
    _stack: list[str] = field(default_factory=list, repr=False)

    def total(self, name: str) -> float:
        """Seconds spent in every stage called ``name``, wherever it was entered (not nested)."""
        return sum(
            s for path, s in self.seconds.items() if path[-1] == name and name not in path[:-1]
        )

    def table(self, min_seconds: float = 0.0) -> str:
        """Return the stages as an indented table: seconds, count, name."""
        lines = []
        for path, seconds in self.seconds.items():
            if seconds < min_seconds:
                continue
            count = self.counts[path]
            times = f" x{count}" if count > 1 else ""
            lines.append(f"{seconds:8.3f} s  {'  ' * (len(path) - 1)}{path[-1]}{times}")
        return "\n".join(lines)


_ACTIVE: ContextVar[Timings | None] = ContextVar("pm_em_timings", default=None)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block under ``name`` when a `record` is active; otherwise do nothing."""
    timings = _ACTIVE.get()
    if timings is None:
        yield
        return
    timings._stack.append(name)
    path = tuple(timings._stack)
    timings.seconds.setdefault(path, 0.0)  # entry order: a stage before its children
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        timings._stack.pop()
        timings.seconds[path] += elapsed
        timings.counts[path] = timings.counts.get(path, 0) + 1


@contextmanager
def record() -> Iterator[Timings]:
    """Collect the stages entered in this block (this thread or task only).

    Yields
    ------
    Timings

    Examples
    --------
    >>> with record() as timings:
    ...     with stage("outer"):
    ...         with stage("inner"):
    ...             pass
    >>> [path for path in timings.seconds]
    [('outer',), ('outer', 'inner')]
    """
    timings = Timings()
    token = _ACTIVE.set(timings)
    try:
        yield timings
    finally:
        _ACTIVE.reset(token)
