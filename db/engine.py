"""Engines and sessions; schema through Alembic migrations.

Engines never log statement parameters (they carry contact fields), test
pooled connections before use (a restarted server or a database made writable
again is picked up without a restart), and on SQLite refuse to work on a file
that was deleted or replaced under the running app.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db.chain import Keyring

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration (tests/test_audit.py holds it to the scripts). A start on a database already
# there reads one row instead of importing Alembic, a quarter of a second of every restart.
HEAD = "0006"
# How long a writer waits for SQLite's lock before giving up, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000


class DatabaseUnavailable(Exception):
    """The audit database cannot be read or written as it should be."""


class DatabaseMissing(DatabaseUnavailable):
    """The SQLite file does not exist (and is not to be created)."""


class DatabaseReplaced(DatabaseUnavailable):
    """The SQLite file the app opened was deleted or replaced while it ran."""


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, or None for other databases and in-memory ones."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return None
    database = parsed.database.removeprefix("file:") if parsed.query.get("uri") == "true" else parsed.database
    return Path(database)


def make_engine(url: str, *, read_only: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode, a busy timeout and secure deletion.

    ``read_only`` (for checking): a SQLite file is opened read-only and never
    created (``DatabaseMissing`` when absent); PostgreSQL sessions are read-only.
    Otherwise a SQLite file is created once here, then opened in a mode that
    cannot create it again, and watched for deletion or replacement.
    """
    kwargs.setdefault("hide_parameters", True)
    kwargs.setdefault("pool_pre_ping", True)
    path = sqlite_path(url)
    watch = None
    if path is not None:
        path = path.resolve()
        if read_only:
            if not path.is_file():
                raise DatabaseMissing(f"no database at {path}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            sqlite3.connect(path).close()  # created now, or never: connections below cannot create it
            watch = _FileWatch(path)
        url = f"sqlite:///file:{path}?mode={'ro' if read_only else 'rw'}&uri=true"
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    elif read_only:
        kwargs.setdefault("execution_options", {"postgresql_readonly": True})
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas_ro if read_only else _sqlite_pragmas)
    if watch is not None:
        event.listen(engine.pool, "checkout", watch.check)
    return engine


class _FileWatch:
    """Remembers which file the app opened; a checkout on another (or none) fails loudly."""

    def __init__(self, path: Path) -> None:
        self.path = path
        st = os.stat(path)
        self.identity = (st.st_dev, st.st_ino)

    def check(self, *_: Any) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            log.error("the audit database %s was deleted while the app runs: nothing is recorded", self.path)
            raise DatabaseReplaced(f"{self.path} was deleted") from None
        if (st.st_dev, st.st_ino) != self.identity:
            log.error("the audit database %s was replaced while the app runs: nothing is recorded", self.path)
            raise DatabaseReplaced(f"{self.path} was replaced")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers proceed while one visitor's acceptance is written; the
    # busy timeout makes concurrent writers queue instead of failing with
    # "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # Erased contact fields must not linger in free pages.
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


def _sqlite_pragmas_ro(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def checkpoint(engine: Engine) -> None:
    """Fold SQLite's WAL into the file and empty it, so deleted bytes leave the WAL too."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def recover(engine: Engine) -> None:
    """Drop pooled connections after an error: the next use opens fresh ones (new file handles, new sockets)."""
    engine.dispose()


def alembic_config(engine: Engine, keys: Keyring | None = None) -> Config:
    """An Alembic config that migrates ``engine``'s database (signing with ``keys`` where a migration needs to)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["engine"] = engine
    cfg.attributes["audit_keys"] = keys
    return cfg


def revision(engine: Engine) -> str | None:
    """The schema's migration, or None for a database that has none yet."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.scalar(text("SELECT version_num FROM alembic_version"))


def upgrade(engine: Engine, target: str = "head", *, keys: Keyring | None = None, steps: bool = False) -> None:
    """Bring the schema up to ``target`` (the latest by default), logging one line when it changed.

    Alembic logs its plugins and each step at INFO, a dozen lines on a first start; ``steps``
    (the command line's ``upgrade``) lets them through.
    """
    before = revision(engine)
    if target == "head" and before == HEAD:
        return
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    if not steps:
        alembic_log.setLevel(logging.WARNING)
    try:
        from alembic import command

        command.upgrade(alembic_config(engine, keys), target)
    finally:
        alembic_log.setLevel(level)
    after = revision(engine)
    if after != before:
        log.info("database schema upgraded from %s to %s", before or "an empty database", after)


def default_keyring() -> Keyring:
    """The audit keys from the settings (``LLMJP_AUDIT_KEY`` or derived from the server secret)."""
    from db.settings import DatabaseSettings

    return DatabaseSettings().audit_keyring()


def session_factory(engine: Engine, keys: Keyring | None = None) -> sessionmaker[Session]:
    """Sessions for ``engine`` carrying the audit ``keys``; callers open and close them (``with factory.begin() as s``)."""
    return sessionmaker(engine, expire_on_commit=False, info={"audit_keys": keys or default_keyring()})
