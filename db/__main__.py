"""``python -m db``: schema upgrades, chain verification, anchors, erasure and the access report.

python -m db upgrade
python -m db verify [--anchor ANCHOR]    exit 0 intact, 1 tampered, 2 cannot check
python -m db head                        print a signed head to keep elsewhere
python -m db erase --identity ID         erase one person's contact fields and kept conversations
python -m db erase --older-than-days N   erase contact fields stored more than N days ago
python -m db export --format csv|json [--since DATE] [--output FILE]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import audit, export
from db.chain import Anchor, Keyring
from db.engine import DatabaseUnavailable, checkpoint, make_engine, session_factory, upgrade
from db.settings import DatabaseSettings

CANNOT_CHECK = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m db", description="The audit database of the LLM-jp demo.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("upgrade", help="apply Alembic migrations up to the latest revision")
    ver = sub.add_parser("verify", help="check the chain; exit 0 intact, 1 tampered (naming the event), 2 cannot check")
    ver.add_argument("--anchor", help="a head printed earlier by 'python -m db head': the log must still extend it")
    sub.add_parser("head", help="print the signed head (number, hash, time) to keep outside the database")
    era = sub.add_parser("erase", help="erase contact fields (the events stay and still verify)")
    who = era.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--identity",
        help="the identity whose contact fields (and conversations kept on the server) to erase, as the report shows it",
    )
    who.add_argument("--older-than-days", type=int, help="erase every contact field stored longer ago than this")
    exp = sub.add_parser("export", help="write the access report")
    exp.add_argument("--format", choices=["csv", "json"], default="csv")
    exp.add_argument("--since", type=export.parse_since, help="only acceptances from this date (UTC) on")
    exp.add_argument("--output", type=Path, help="write here instead of standard output")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command named on the command line; the exit status says whether it succeeded."""
    args = _parser().parse_args(argv)
    settings = DatabaseSettings()
    where = settings.database_url_redacted
    writes = args.command in ("upgrade", "erase")
    try:
        engine = make_engine(settings.resolved_database_url, read_only=not writes)
    except (DatabaseUnavailable, SQLAlchemyError, OSError) as exc:
        print(f"cannot check: {where} cannot be opened ({type(exc).__name__}: {_first_line(exc)})", file=sys.stderr)
        return CANNOT_CHECK
    try:
        if args.command != "upgrade" and "audit_head" not in inspect(engine).get_table_names():
            print(f"cannot check: {where} holds no audit log (run 'python -m db upgrade')", file=sys.stderr)
            return CANNOT_CHECK
    except SQLAlchemyError as exc:
        print(f"cannot check: {where} cannot be opened ({type(exc).__name__}: {_first_line(exc)})", file=sys.stderr)
        return CANNOT_CHECK
    try:
        # Checking makes nothing: no database, and no new secret (a new key would fail every event anyway).
        keys = settings.audit_keyring(create=writes)
    except OSError as exc:
        print(f"cannot check: no audit key ({exc})", file=sys.stderr)
        return CANNOT_CHECK
    try:
        if args.command == "upgrade":
            # Each migration step as it runs, and then what changed.
            logging.basicConfig(level=logging.WARNING, format="%(message)s")
            for name in ("alembic.runtime.migration", "db.engine"):
                logging.getLogger(name).setLevel(logging.INFO)
            upgrade(engine, keys=keys, steps=True)
            print(f"schema is up to date ({where})")
            return 0
        sessions = session_factory(engine, keys)
        if args.command == "verify":
            return _verify(sessions, keys, args.anchor)
        if args.command == "head":
            with sessions() as session:
                print(audit.head_anchor(session).dump(keys))
            return 0
        if args.command == "erase":
            with sessions.begin() as session:
                if args.identity:
                    erasure = audit.erase_person(session, identity=args.identity, by="operator")
                else:
                    erasure = audit.Erasure(audit.erase_older(session, days=args.older_than_days))
            checkpoint(engine)
            print(f"erased {erasure.detail()}" if erasure else "nothing to erase")
            return 0
        with sessions() as session:
            text = export.render(session, args.format, args.since)
    except (DatabaseUnavailable, SQLAlchemyError, OSError) as exc:
        print(f"cannot check: {where} cannot be opened ({type(exc).__name__}: {_first_line(exc)})", file=sys.stderr)
        return CANNOT_CHECK
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _verify(sessions: sessionmaker[Session], keys: Keyring, anchor_text: str | None) -> int:
    anchor = None
    if anchor_text:
        try:
            anchor = Anchor.load(anchor_text, keys)
        except ValueError as exc:
            print(f"cannot check: {exc}", file=sys.stderr)
            return CANNOT_CHECK
    with sessions() as session:
        verdict = audit.verify(session, anchor=anchor)
    if verdict.ok:
        extends = f", extends the anchor at event {anchor.seq}" if anchor else ""
        print(f"OK: {verdict.events} events, chain intact, head {verdict.head}{extends}")
        return 0
    print(f"FAILED at event {verdict.bad_seq}: {verdict.problem}", file=sys.stderr)
    return 1


def _first_line(exc: BaseException) -> str:
    # Driver messages can run to several lines (and SQL); the first says what went wrong.
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
