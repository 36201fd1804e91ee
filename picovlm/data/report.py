"""What reading data left out, and why: one line per problem, a count per reason, one summary.

Every record a reader yields is counted as read; each one left out (a malformed record, an image
that cannot be read, a conversation too long for the context, the unread rest of a damaged file)
is a `Reject`: logged once at WARNING as "{source}: {what}", counted under its reason, and, given a
`rejects` file, appended to it as one JSON line (the stage, the source, the reason, the message and
the record as it was read), so that the records can be fixed and put back.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picovlm.data.records import DAMAGED_FILE

log = logging.getLogger(__name__)


@dataclass
class Reject:
    source: str  # file and record, as in every message
    reason: str  # what it is counted under: BAD_RECORD, BAD_IMAGE, TOO_LONG or DAMAGED_FILE
    error: str  # the one-line message
    record: Any = None  # the record as read (JSON), when there was one


class DataReport:
    """The account of one stage's data (or of one file's). `quiet` counts without logging: for a
    second read of the same files (the tokenizer's), whose problems the stages report."""

    def __init__(self, name: str = "data", rejects: Path | None = None, quiet: bool = False):
        self.name, self.rejects, self.quiet = name, rejects, quiet
        self.read = 0
        self.rejected: list[Reject] = []
        self.truncated: list[str] = []  # sources of the records used cut short

    def reject(self, source: str, reason: str, error: str, record: Any = None) -> None:
        self.rejected.append(Reject(source, reason, error, record))
        if self.quiet:
            return
        log.warning(f"{source}: {error}")
        if self.rejects is not None:
            line = {"stage": self.name, "source": source, "reason": reason, "error": error, "record": record}
            with open(self.rejects, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, default=str) + "\n")

    def truncate(self, source: str, note: str) -> None:
        """A record used, but cut short (`StageConfig.too_long` "truncate"): one line, counted."""
        self.truncated.append(source)
        if not self.quiet:
            log.warning(f"{source}: {note}")

    def counts(self) -> dict[str, int]:
        """Rejects per reason, the most frequent first."""
        return dict(Counter(r.reason for r in self.rejected).most_common())

    @property
    def used(self) -> int:
        """Records read and not rejected (the unread rest of a damaged file was never counted as read)."""
        return self.read - sum(r.reason != DAMAGED_FILE for r in self.rejected)

    def summary(self) -> str:
        """One line: "instruct data: 8 records read, 6 used, 2 skipped (1 too long, 1 bad image)"."""
        counts = {k: v for k, v in self.counts().items() if k != DAMAGED_FILE}
        skipped = sum(counts.values())
        line = f"{self.name} data: {self.read} records read, {self.used} used, {skipped} skipped"
        line += f" ({', '.join(f'{n} {reason}' for reason, n in counts.items())})" if counts else ""
        line += f", {len(self.truncated)} of those used truncated" if self.truncated else ""
        damaged = [r.source for r in self.rejected if r.reason == DAMAGED_FILE]
        return line + (f"; not read to the end: {', '.join(damaged)}" if damaged else "")

    def as_dict(self) -> dict[str, Any]:
        """The counts, for the stage's log.jsonl."""
        return {"read": self.read, "used": self.used, "skipped": self.counts(), "truncated": len(self.truncated)}
