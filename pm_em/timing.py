"""Where a fit's time goes: named stages, timed only while a `record` is active.

The bottom layer of the package. Code marks its stages with ``with stage("name"):``; outside
a `record` that costs one context-variable lookup (well under a microsecond), so the marks
stay in place. The benchmark (``./dev bench --only speed``) prints the breakdown of a fit
on a new model from them::

    with pm_em.timing.record() as timings:
        pm_em.fit(model)
    print(timings.table())

Stages nest: a stage entered inside another is reported under it, and each stage's time
includes its children's. While `tracemalloc` traces, each stage's peak of traced memory is
recorded too (``Timings.peak_bytes``); to do so a `record` resets tracemalloc's peak at
every stage boundary, so read peaks from it, not from ``tracemalloc.get_traced_memory``.
"""

import time
import tracemalloc
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
    peak_bytes : dict of {tuple of str: int}
        Highest memory traced by `tracemalloc` while each path ran (all that was allocated
        then, including what was allocated before it); empty unless tracemalloc traced.
    """

    seconds: dict[tuple[str, ...], float] = field(default_factory=dict)
    counts: dict[tuple[str, ...], int] = field(default_factory=dict)
    peak_bytes: dict[tuple[str, ...], int] = field(default_factory=dict)
    # The stages open now, innermost last: each path and its peak so far (a list, to update).
    _open: list[tuple[tuple[str, ...], list[int]]] = field(default_factory=list, repr=False)

    def _memory_mark(self) -> None:
        """Give every open stage the peak since the last mark, and start a new interval."""
        if not tracemalloc.is_tracing():
            return
        peak = tracemalloc.get_traced_memory()[1]
        for _, best in self._open:
            best[0] = max(best[0], peak)
        tracemalloc.reset_peak()

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
    path = (*timings._open[-1][0], name) if timings._open else (name,)
    timings.seconds.setdefault(path, 0.0)  # entry order: a stage before its children
    # One peak per interval between marks, shared by the stages open in it (reset_peak
    # would otherwise lose an enclosing stage's earlier peak).
    timings._memory_mark()
    best = [tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0]
    timings._open.append((path, best))
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        timings._memory_mark()
        timings._open.pop()
        timings.seconds[path] += elapsed
        timings.counts[path] = timings.counts.get(path, 0) + 1
        if tracemalloc.is_tracing():
            timings.peak_bytes[path] = max(timings.peak_bytes.get(path, 0), best[0])


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
