"""Signed receipts: how an anonymous browser is recognised when it returns.

A receipt names the identity that accepted and the terms it accepted, signed
with the server's secret (HMAC-SHA256 through ``itsdangerous``) and dated. It
proves identity only; whether that identity may chat is always decided from
the audit log, so a withdrawn consent or new terms lock it at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

_SALT = "llmjp-demo/receipt/v1"


@dataclass(frozen=True)
class Receipt:
    """What a valid receipt says."""

    identity: str
    terms_id: str
    terms_sha256: str


class Receipts:
    """Issues and checks receipts with one server secret."""

    def __init__(self, secret: bytes, *, max_age_days: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT)
        self.max_age = max_age_days * 86400

    def issue(self, receipt: Receipt) -> str:
        """A signed, dated token for ``receipt``."""
        return self._serializer.dumps([receipt.identity, receipt.terms_id, receipt.terms_sha256])

    def read(self, token: object) -> Receipt | None:
        """The receipt in ``token``, or None when it is forged, altered, expired or malformed."""
        if not isinstance(token, str) or not token or len(token) > 4096:
            return None
        try:
            identity, terms_id, sha = self._serializer.loads(token, max_age=self.max_age)
        except (BadSignature, ValueError, TypeError):
            return None
        if not (isinstance(identity, str) and identity.startswith("anon:")):
            return None  # receipts only ever name anonymous identities
        return Receipt(identity, str(terms_id), str(sha))
