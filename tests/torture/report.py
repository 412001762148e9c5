"""The torture suite's table: store x mode x fault -> campaigns, faults, violations.

Each test (one cell) adds a :class:`Row`; the conftest prints the table at the end of
the session and writes it to ``$RESTARTABLE_TORTURE_REPORT`` when that is set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Row", "Report"]


@dataclass
class Row:
    store: str
    mode: str
    fault: str
    campaigns: int = 0
    faults: int = 0
    #: Kills whose victim's last logged event was "s" (a checkpoint being written).
    in_save: int = 0
    #: The most items one fault made a later runner redo, and the documented bound (None: unbounded).
    max_redo: int = 0
    bound: int | None = 0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Report:
    """Rows in the order the cells ran."""

    def __init__(self, mode: str, seed: str) -> None:
        self.mode = mode
        self.seed = seed
        self.rows: list[Row] = []

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def table(self) -> str:
        """The table as Markdown (readable in a terminal too)."""
        head = ["store", "mode", "fault", "campaigns", "faults", "in-save", "max redo (bound)", "violations", "s"]
        lines = [head]
        for r in self.rows:
            bound = "n/a" if r.bound is None else str(r.bound)
            lines.append(
                [
                    r.store,
                    r.mode,
                    r.fault,
                    str(r.campaigns),
                    str(r.faults),
                    str(r.in_save) if r.fault in ("kill", "dup") else "",
                    f"{r.max_redo} ({bound})",
                    str(len(r.violations)),
                    f"{r.seconds:.1f}",
                ]
            )
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        out = []
        for k, row in enumerate(lines):
            out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
            if k == 0:
                out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        total_faults = sum(r.faults for r in self.rows)
        total_v = sum(len(r.violations) for r in self.rows)
        seconds = sum(r.seconds for r in self.rows)
        out.append("")
        out.append(
            f"{self.mode} mode, seed {self.seed!r}: {len(self.rows)} cells, "
            f"{sum(r.campaigns for r in self.rows)} campaigns, {total_faults} faults, {total_v} violations, "
            f"{seconds:.0f} s"
        )
        for r in self.rows:
            for v in r.violations:
                out.append(f"VIOLATION {r.store}/{r.mode}/{r.fault}: {v}")
        notes = sorted({f"{r.store}/{r.fault}: {n}" for r in self.rows for n in r.notes})
        out.extend(f"note {n}" for n in notes)
        return "\n".join(out)

    def write(self) -> None:
        target = os.environ.get("RESTARTABLE_TORTURE_REPORT")
        if target and self.rows:
            Path(target).write_text(self.table() + "\n")
