"""``python -m db``: schema upgrades, chain verification and the access report.

python -m db upgrade
python -m db verify
python -m db export --format csv|json [--since DATE] [--output FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from db import export
from db.audit import verify
from db.engine import make_engine, session_factory, upgrade


def main(argv: list[str] | None = None) -> int:
    """Run the command named on the command line; the exit status says whether it succeeded."""
    from webapp.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m db", description="The audit database of the LLM-jp demo.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("upgrade", help="apply Alembic migrations up to the latest revision")
    sub.add_parser("verify", help="check the hash chain of the audit log; exit 1 naming the first bad event")
    exp = sub.add_parser("export", help="write the access report")
    exp.add_argument("--format", choices=["csv", "json"], default="csv")
    exp.add_argument("--since", type=export.parse_since, help="only acceptances from this date (UTC) on")
    exp.add_argument("--output", type=Path, help="write here instead of standard output")
    args = parser.parse_args(argv)

    settings = Settings()
    engine = make_engine(settings.resolved_database_url)
    if args.command == "upgrade":
        upgrade(engine)
        print(f"schema is up to date ({settings.database_url_redacted})")
        return 0
    with session_factory(engine)() as session:
        if args.command == "verify":
            verdict = verify(session)
            if verdict.ok:
                print(f"OK: {verdict.events} events, chain intact, head {verdict.head}")
                return 0
            print(f"FAILED at event {verdict.bad_seq}: {verdict.problem}", file=sys.stderr)
            return 1
        text = export.render(session, args.format, args.since)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
