"""Rise/fall: a healthy backend goes down after ``fall`` failed probes in a row, a down one
comes back after ``rise`` passes in a row. Pure: no time, no I/O.

Before its first result a backend is undecided and shows ``initial_healthy``; the first
result decides at once (as Envoy does at startup), so a dead backend found by the first
round never takes traffic and a live one does not wait ``rise`` rounds.
"""

from __future__ import annotations

__all__ = ["StreakPolicy"]


class StreakPolicy:
    __slots__ = ("rise", "fall", "healthy", "decided", "streak")

    def __init__(self, rise: int, fall: int, initial_healthy: bool = True) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise = rise
        self.fall = fall
        self.healthy = initial_healthy
        self.decided = False
        self.streak = 0
        """Results in a row that disagree with ``healthy`` (failures while healthy, passes
        while down); a result that agrees resets it."""

    def observe(self, ok: bool) -> bool:
        """Take one probe result; True when ``healthy`` changed."""
        if not self.decided:
            self.decided = True
            changed, self.healthy, self.streak = self.healthy != ok, ok, 0
            return changed
        if ok == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < (self.fall if self.healthy else self.rise):
            return False
        self.healthy, self.streak = ok, 0
        return True
