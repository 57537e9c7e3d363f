"""How events are hashed: an HMAC-SHA256 chain under an audit key kept outside the database.

An event's hash is HMAC-SHA256(key, canonical JSON of its fields and the
previous event's hash). Whoever can write to the database but does not hold the
key cannot recompute a chain that ``verify`` accepts. Contact fields are not in
the chain: only a salted SHA-256 commitment to them, so they can be erased
while the evidence stays verifiable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

GENESIS = "0" * 64
CONTACT_FIELDS = ("name", "email", "affiliation", "purpose", "user_agent")


def _canonical(fields: Mapping[str, object]) -> bytes:
    return json.dumps(dict(fields), sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def iso(at: datetime) -> str:
    """The one text form of a time inside hashes."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def legacy_hash(fields: Mapping[str, object]) -> str:
    """Revision 0002's unkeyed SHA-256 (``created_at`` already as ``iso`` text); only to check old logs."""
    return hashlib.sha256(_canonical(fields)).hexdigest()


def new_salt() -> str:
    """A fresh random salt for one contact commitment."""
    return secrets.token_hex(16)


def commitment(salt: str, contact: Mapping[str, str | None]) -> str:
    """SHA-256 over a random salt and the contact fields: binds them without revealing them.

    Once the fields and the salt are erased, the commitment says nothing about
    what they were (the salt makes guessing an email address useless).
    """
    body = {name: contact.get(name) for name in CONTACT_FIELDS}
    return hashlib.sha256(bytes.fromhex(salt) + _canonical(body)).hexdigest()


def key_id(key: bytes) -> str:
    """A short public name for ``key``, stored with each event so rotated keys can be found."""
    return hashlib.sha256(b"llmjp-demo/audit-key-id\0" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Keyring:
    """The audit key that signs new events, and earlier keys that still verify old ones."""

    current: bytes
    previous: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if len(self.current) < 16 or any(len(k) < 16 for k in self.previous):
            raise ValueError("an audit key must be at least 16 bytes")

    @classmethod
    def of(cls, current: bytes, previous: Iterable[bytes] = ()) -> Keyring:
        return cls(current, tuple(previous))

    @property
    def current_id(self) -> str:
        return key_id(self.current)

    def get(self, kid: str) -> bytes | None:
        """The key named ``kid``, or None when this keyring does not hold it."""
        for key in (self.current, *self.previous):
            if hmac.compare_digest(key_id(key), kid):
                return key
        return None

    def sign(self, kid: str, fields: Mapping[str, object]) -> str | None:
        """HMAC-SHA256 of ``fields`` under key ``kid``; None when the key is unknown."""
        key = self.get(kid)
        return None if key is None else hmac.new(key, _canonical(fields), hashlib.sha256).hexdigest()


# -- anchors: a signed copy of the head an operator keeps elsewhere ----------------------

ANCHOR_VERSION = "llmjp-head-v1"


@dataclass(frozen=True)
class Anchor:
    """The head at one moment: the log must still contain event ``seq`` with ``hash``."""

    seq: int
    hash: str
    at: datetime

    def _message(self) -> dict[str, object]:
        return {"v": ANCHOR_VERSION, "seq": self.seq, "hash": self.hash, "at": iso(self.at)}

    def dump(self, keys: Keyring) -> str:
        """``llmjp-head-v1.<seq>.<hash>.<time>.<key id>.<signature>``, one copy-pasteable line."""
        kid = keys.current_id
        sig = keys.sign(kid, self._message())
        return ".".join([ANCHOR_VERSION, str(self.seq), self.hash, self.at.strftime("%Y%m%dT%H%M%S%fZ"), kid, str(sig)])

    @classmethod
    def load(cls, text: str, keys: Keyring) -> Anchor:
        """Parse and check an anchor; ValueError says why it cannot be trusted."""
        parts = text.strip().split(".")
        if len(parts) != 6 or parts[0] != ANCHOR_VERSION:
            raise ValueError(f"not an anchor (expected {ANCHOR_VERSION}.<seq>.<hash>.<time>.<key id>.<signature>)")
        _, seq, digest, at, kid, sig = parts
        try:
            anchor = cls(int(seq), digest, datetime.strptime(at, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC))
        except ValueError:
            raise ValueError("the anchor's number or time is malformed") from None
        expected = keys.sign(kid, anchor._message())
        if expected is None:
            raise ValueError(f"the anchor was signed with key {kid}, which is not configured")
        if not hmac.compare_digest(expected, sig):
            raise ValueError("the anchor's signature does not match: it was altered or signed with another key")
        return anchor


# The fields revision 0002 hashed with plain SHA-256, in that revision's rows.
LEGACY_FIELDS = (
    "seq", "kind", "identity", "created_at", "terms_id", "terms_sha256", "licence", "model_id", "reason",
    "name", "email", "affiliation", "purpose", "user_agent", "client_hash", "prev_hash",
)  # fmt: skip
