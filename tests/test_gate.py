"""The gate under concurrent visitors who accept, withdraw and acknowledge at once, on one SQLite file."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from db.audit import verify
from db.engine import make_engine, session_factory, upgrade
from inference import CHECKPOINTS, Registry
from webapp.gate.consent import AcceptanceForm, Gate
from webapp.gate.identity import Caller, Identities
from webapp.gate.receipts import Receipts
from webapp.gate.terms import Terms

FORM = AcceptanceForm.parse(name="n", email="n@example.jp", affiliation="a", purpose="p", agree=True)
WEBLAB = Registry.of(CHECKPOINTS).get("weblab-10b-instruction-sft")


def test_mixed_writers_never_see_locked(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'gate.sqlite3'}")
    upgrade(engine)
    secret = b"0123456789abcdef0123456789abcdef"
    identities = Identities(Receipts(secret, max_age_days=1), secret)
    gate = Gate(session_factory(engine), Terms.load(), identities)

    def anonymous(n: int) -> Caller:
        anon_id = f"visitor-{n:02d}-0123456789abcdef"
        return Caller(identities.pseudonym(anon_id), None, None, None, None, anon_id)

    def visitor(n: int) -> None:
        caller = anonymous(n)
        for _ in range(10):
            gate.accept(caller, FORM)
            gate.acknowledge(caller, WEBLAB)
            gate.withdraw(caller)
        gate.accept(caller, FORM)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(visitor, range(16)))
    with session_factory(engine)() as s:
        result = verify(s)
    assert result.ok and result.events == 16 * (10 * 2 + 1 + 1)  # accepts and withdrawals, last accept, one ack
    assert all(gate.has_consent(anonymous(n)) for n in range(16))
