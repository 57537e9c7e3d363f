"""The access report as CSV or JSON text, and the one CSV writer every export uses."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

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
        return csv_text(REPORT_COLUMNS, rows)
    raise ValueError(f"unknown format {fmt!r}: use csv or json")


def csv_text(columns: Sequence[str], rows: list[dict[str, Any]]) -> str:
    """CSV text with a header; cells a spreadsheet would run as formulas are kept as text."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


# Visitors type these fields: a leading = + - @ (or a tab or carriage return before one) would run as a
# formula when an operator opens the CSV in a spreadsheet. A quote prefix keeps it text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _spreadsheet_safe(value: Any) -> Any:
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value
