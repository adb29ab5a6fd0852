"""What one ingestion did, per file and in total, and the row-accounting invariant.

Per file and in total: ``read = stored + superseded + quarantined``, every term counted on its own
(stored rows in the batch tables, superseded and quarantined rows in the staging table), so a lost or
doubled row breaks the equation instead of hiding in a subtraction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd


class RowAccountingError(RuntimeError):
    """Rows of a file are unaccounted for; the batch is rolled back and the files stay in landing."""


@dataclass
class FileReport:
    source_file: str
    status: str  # "ingested" | "rejected"
    file_format: str | None = None
    kind: str | None = None  # "earnings" | "balance"
    rows_read: int = 0
    rows_accepted: int = 0  # passed validation: stored + superseded
    rows_quarantined: int = 0
    rows_stored: int = 0  # written to raw_earnings (earnings) or balance_polls (balance)
    rows_superseded: int = 0  # valid, but a later file of the batch carries the same key
    min_ts: datetime | None = None
    max_ts: datetime | None = None
    reason: str | None = None
    stored_as: str | None = None


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)
    rows_inserted: int = 0  # new (device, protocol, ts) keys in raw_earnings
    rows_updated: int = 0  # keys that existed and were overwritten
    balance_baselines: int = 0  # first polls of a series: stored, but no earnings row yet
    rows_imputed: int = 0  # derived hours whose earnings were spread over a balance-poll gap
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    def _total(self, name: str) -> int:
        return sum(int(getattr(f, name)) for f in self.files)

    @property
    def rows_read(self) -> int:
        return self._total("rows_read")

    @property
    def rows_accepted(self) -> int:
        return self._total("rows_accepted")

    @property
    def rows_quarantined(self) -> int:
        return self._total("rows_quarantined")

    @property
    def rows_stored(self) -> int:
        return self._total("rows_stored")

    @property
    def rows_superseded(self) -> int:
        return self._total("rows_superseded")

    @property
    def files_rejected(self) -> int:
        return sum(1 for f in self.files if f.status == "rejected")

    @property
    def files_ingested(self) -> int:
        return sum(1 for f in self.files if f.status == "ingested")

    def per_file_frame(self) -> pd.DataFrame:
        """One row per file with the row counts (``*_rows``) and the newest hour it carried."""
        return pd.DataFrame(
            {
                "file": [f.source_file for f in self.files],
                "status": [f.status for f in self.files],
                "format": [f.file_format or "" for f in self.files],
                "kind": [f.kind or "" for f in self.files],
                "read_rows": pd.Series([f.rows_read for f in self.files], dtype="int64"),
                "stored_rows": pd.Series([f.rows_stored for f in self.files], dtype="int64"),
                "superseded_rows": pd.Series([f.rows_superseded for f in self.files], dtype="int64"),
                "quarantined_rows": pd.Series([f.rows_quarantined for f in self.files], dtype="int64"),
                "max_hour_utc": ["" if f.max_ts is None else f"{pd.Timestamp(f.max_ts):%Y-%m-%d %H:%M}" for f in self.files],
                "reason": [(f.reason or "")[:200] for f in self.files],
            }
        )

    def quarantine_reasons_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"reason": list(self.quarantine_reasons), "rows": pd.Series(list(self.quarantine_reasons.values()), dtype="int64")}
        )


def verify_row_accounting(files: list[FileReport]) -> None:
    """Raise :class:`RowAccountingError` naming every file where read != stored + superseded + quarantined
    or accepted != stored + superseded."""
    broken = [
        f"{f.source_file}: read {f.rows_read} != stored {f.rows_stored} + superseded {f.rows_superseded} + quarantined {f.rows_quarantined}"
        for f in files
        if f.rows_read != f.rows_stored + f.rows_superseded + f.rows_quarantined or f.rows_accepted != f.rows_stored + f.rows_superseded
    ]
    if broken:
        raise RowAccountingError("ingestion row accounting broken (nothing was committed): " + "; ".join(broken))
