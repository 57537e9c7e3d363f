"""``verify`` on a live system: 8 clients accept over HTTP while it runs, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy import text

from db import audit
from db.engine import make_engine, session_factory
from tests.conftest import GENEROUS_LIMITS, ROOT, launch

FORM = {"name": "山田 太郎", "email": "taro@example.jp", "affiliation": "NII", "purpose": "研究", "agree": True}


def test_verify_while_eight_clients_accept(database_url: str, models_dir: Path, tmp_path: Path) -> None:
    from webapp.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, models="tiny",
                        default_model="tiny-llama", hub_offline=True, **GENEROUS_LIMITS)  # fmt: skip
    app = launch(settings, models_dir)
    stop = threading.Event()
    accepted = [0] * 8

    def visitor(worker: int) -> None:
        client = app.client()
        n = 0
        while not stop.is_set():
            client.predict(**(FORM | {"name": f"live-{worker}-{n}"}), api_name="/accept_terms")
            accepted[worker] += 1
            n += 1

    readonly = make_engine(database_url, read_only=True)
    sessions = session_factory(readonly, settings.audit_keyring())
    env = os.environ | {"LLMJP_DATABASE_URL": database_url, "LLMJP_DATA_DIR": str(settings.data_dir)}

    def cli_verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "db", "verify"], cwd=ROOT, env=env, capture_output=True,
                              text=True)  # fmt: skip

    def runs() -> list[audit.Verdict]:
        verdicts = []
        for _ in range(20):
            with sessions() as s:
                verdicts.append(audit.verify(s))
        return verdicts

    threads = [threading.Thread(target=visitor, args=(w,), daemon=True) for w in range(8)]
    try:
        for t in threads:
            t.start()
        while sum(accepted) < 16:
            threading.Event().wait(0.05)
        clean = runs()
        # The command line once per state: it runs the same audit.verify as the 20 checks in this process
        # (each start of it costs seconds on a CPU the 8 visitors keep busy).
        cli_clean = cli_verify()
        assert [v.problem for v in clean if not v.ok] == []  # no false alarm
        assert cli_clean.returncode == 0, cli_clean.stderr
        assert clean[-1].events > clean[0].events  # the log grew while it was being checked
        writer = make_engine(database_url)
        with writer.begin() as conn:
            if writer.dialect.name == "sqlite":
                conn.execute(text("DROP TRIGGER events_no_update"))
            else:
                conn.execute(text("DROP TRIGGER events_no_change ON events"))
            conn.execute(text("UPDATE events SET terms_id = 'edited' WHERE seq = 2"))
        writer.dispose()
        edited = runs()
        cli_edited = cli_verify()
        assert all(v.bad_seq == 2 for v in edited), [v.problem for v in edited]
        assert cli_edited.returncode == 1 and "FAILED at event 2" in cli_edited.stderr, cli_edited.stderr
        assert all(t.is_alive() for t in threads)  # the visitors were accepting throughout
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        readonly.dispose()
        app.demo.close()
    print(f"\n{readonly.dialect.name}: {sum(accepted)} acceptances during 42 checks; {clean[-1].events} events")
