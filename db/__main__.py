"""``python -m db upgrade``: bring the audit database's schema up to date."""

from __future__ import annotations

import argparse
import sys

from db.engine import make_engine, upgrade


def main(argv: list[str] | None = None) -> int:
    """Run the command named on the command line."""
    from webapp.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m db", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("upgrade", help="apply Alembic migrations up to the latest revision")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "upgrade":
        upgrade(make_engine(settings.resolved_database_url))
        print(f"schema is up to date ({settings.database_url_redacted})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
