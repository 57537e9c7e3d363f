"""The access report as CSV or JSON text."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime

from sqlalchemy.orm import Session

from db.audit import REPORT_COLUMNS, access_report


def parse_since(value: str) -> datetime:
    """A date (``2026-11-01``) or ISO datetime; times without a zone are UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def render(session: Session, fmt: str, since: datetime | None = None) -> str:
    """The report in ``fmt`` ('csv' or 'json')."""
    rows = access_report(session, since=since)
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=REPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(_spreadsheet_safe(row) for row in rows)
        return out.getvalue()
    raise ValueError(f"unknown format {fmt!r}: use csv or json")


def _spreadsheet_safe(row: dict[str, str]) -> dict[str, str]:
    # Visitors type these fields: a leading = + - @ would run as a formula when
    # an operator opens the CSV in a spreadsheet. A quote prefix keeps it text.
    return {k: "'" + v if v[:1] in ("=", "+", "-", "@", "\t", "\r") else v for k, v in row.items()}
