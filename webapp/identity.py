"""Who is calling: the one place an identity is derived from a request."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import gradio as gr

from webapp.errors import ConsentRequired
from webapp.receipts import Receipts

_USER_AGENT_MAX = 512


@dataclass(frozen=True)
class Caller:
    """The identity an acceptance is recorded under and checked against."""

    identity: str
    """``hf:<username>`` when signed in, else ``anon:<id>`` from a receipt or this session."""
    username: str | None
    user_agent: str | None
    client_hash: str | None


class Identities:
    """Derives callers from requests: Hugging Face account, then receipt, then session."""

    def __init__(self, receipts: Receipts, secret: bytes) -> None:
        self.receipts = receipts
        self._salt = hmac.new(secret, b"llmjp-demo/client-hash", hashlib.sha256).digest()

    def caller(self, request: gr.Request | None, profile: gr.OAuthProfile | None, receipt: str | None) -> Caller:
        """The caller of ``request``. Fails closed: no session and no account means no identity."""
        username = getattr(profile, "username", None) if profile is not None else None
        if username:
            identity = f"hf:{username}"
        elif (valid := self.receipts.read(receipt)) is not None:
            identity = valid.identity
        else:
            session_hash = getattr(request, "session_hash", None) if request is not None else None
            if not session_hash:
                raise ConsentRequired()
            identity = f"anon:{session_hash}"
        return Caller(identity, username, _user_agent(request), self._client_hash(request))

    def _client_hash(self, request: gr.Request | None) -> str | None:
        """A salted hash of the client's address: repeat visits can be told apart, the address is never kept."""
        address = _client_address(request)
        if not address:
            return None
        return hmac.new(self._salt, address.encode(), hashlib.sha256).hexdigest()[:32]


def _user_agent(request: gr.Request | None) -> str | None:
    headers = getattr(request, "headers", None) or {}
    agent = headers.get("user-agent")
    return agent[:_USER_AGENT_MAX] if agent else None


def _client_address(request: gr.Request | None) -> str | None:
    if request is None:
        return None
    headers = getattr(request, "headers", None) or {}
    # Behind Spaces' proxy the visitor is the first X-Forwarded-For entry.
    forwarded = headers.get("x-forwarded-for", "")
    if forwarded:
        return forwarded.split(",")[0].strip()
    client = getattr(request, "client", None)
    return getattr(client, "host", None)
