"""Signed receipts: how an anonymous browser is recognised when it returns.

A receipt carries the random id the server issued to an anonymous visitor when
they accepted, and the terms they accepted, signed with the server's secret
(HMAC-SHA256 through ``itsdangerous``) and dated. The id itself is never shown
or stored: the audit log holds a pseudonym derived from it with the secret
(``Identities.pseudonym``), so nothing an administrator sees can be turned back
into a receipt. A receipt proves identity only; whether that identity may chat
is always decided from the audit log, so a withdrawn consent or new terms lock
it at once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

# v2: random ids and SHA-256. Receipts of v1 (SHA-1, naming the session) are not honoured.
_SALT = "llmjp-demo/receipt/v2"
ANON_ID = re.compile(r"[A-Za-z0-9_-]{22,64}")
MAX_RECEIPT_CHARS = 1024


@dataclass(frozen=True)
class Receipt:
    """What a valid receipt says."""

    anon_id: str
    """The random id issued to the visitor: a credential, never displayed or stored."""
    terms_id: str
    terms_sha256: str


class Receipts:
    """Issues and checks receipts with one server secret."""

    def __init__(self, secret: bytes, *, max_age_days: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT, signer_kwargs={"digest_method": hashlib.sha256})
        self.max_age = max_age_days * 86400

    def issue(self, receipt: Receipt) -> str:
        """A signed, dated token for ``receipt``."""
        return self._serializer.dumps([receipt.anon_id, receipt.terms_id, receipt.terms_sha256])

    def read(self, token: object) -> Receipt | None:
        """The receipt in ``token``, or None when it is forged, altered, expired or malformed."""
        if not isinstance(token, str) or not token or len(token) > MAX_RECEIPT_CHARS:
            return None
        try:
            anon_id, terms_id, sha = self._serializer.loads(token, max_age=self.max_age)
        except (BadSignature, ValueError, TypeError, UnicodeError):
            return None
        if not (isinstance(anon_id, str) and ANON_ID.fullmatch(anon_id)):
            return None
        return Receipt(anon_id, str(terms_id), str(sha))
