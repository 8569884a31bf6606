"""Fault drills: real servers (testbed.servers), real edge agents and gateway, one verdict line.

Every drill ends with exactly one line a script can parse:

    drill <name>: published=<n> stored=<n> duplicates=<n> lost=<n> verdict=PASS|FAIL

``published`` = samples the agents produced, ``stored`` = distinct samples in the store,
``duplicates`` = stored points beyond one per sample, ``lost = published - stored - rejected``
(hostile input is counted as rejected, not lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DrillResult:
    name: str
    published: int
    stored: int
    duplicates: int
    rejected: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    failed_checks: tuple[str, ...] = ()  # drill-specific checks beyond loss and duplicates

    @property
    def lost(self) -> int:
        return self.published - self.stored - self.rejected

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and not self.failed_checks

    def line(self) -> str:
        return (f"drill {self.name}: published={self.published} stored={self.stored} "
                f"duplicates={self.duplicates} lost={self.lost} "
                f"verdict={'PASS' if self.passed else 'FAIL'}")
