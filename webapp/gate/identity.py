"""Who is calling: the one place an identity is derived from a request.

Identities are issued by the server, never taken from what a client chose:

- signed in with Hugging Face: ``hf:<username>`` (the account, checked by OAuth);
- anonymous: on acceptance the server draws a random id, hands it back inside a
  signed receipt, and records ``anon:<pseudonym>``, an HMAC of the id under the
  server secret. The pseudonym is what administrators see and export; it cannot
  be turned back into the id, so it is no credential. Within one Gradio session
  the id is also remembered server-side (for requests from the same client
  address), so an API client may accept and then chat in the same session
  without passing the receipt.

The session hash a client sends is only ever a key into that server-side map,
validated before use; it is never an identity, never stored and never shown.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import gradio as gr

from inference.errors import InvalidInput
from webapp.gate.receipts import Receipt, Receipts

_USER_AGENT_MAX = 512
# Gradio's clients send random base-36 strings or UUIDs; anything else is refused.
SESSION_HASH = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Hugging Face usernames: letters, digits, '-', '_' and '.', at most 96 characters.
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
# Any identity the log holds: accounts, pseudonyms, and older logs' anonymous session ids.
IDENTITY = re.compile(r"(hf|anon):[A-Za-z0-9._-]{1,96}")
IDENTITY_MAX = 100
"""No identity is longer than this (``hf:`` + 96, or ``anon:`` + 32)."""


class InvalidSession(InvalidInput):
    """The client sent a session hash that is not one a Gradio client makes."""

    def __init__(self) -> None:
        super().__init__(
            "セッション ID が不正です。ページを再読み込みしてください。",
            "Invalid session id. Reload the page.",
        )


@dataclass(frozen=True)
class Caller:
    """The identity an acceptance is recorded under and checked against."""

    identity: str | None
    """``hf:<username>`` when signed in, ``anon:<pseudonym>`` from a receipt or this session, else None."""
    username: str | None
    user_agent: str | None
    client_hash: str | None
    """Salted hash of the client address (after the trusted proxies), never the address."""
    session: str | None
    """The validated Gradio session hash, used only as a key into server-side state."""
    anon_id: str | None = field(default=None, repr=False)
    """The random id behind an anonymous identity (from the receipt or this session): a credential."""

    def __post_init__(self) -> None:
        if self.identity is not None and len(self.identity) > IDENTITY_MAX:
            raise ValueError("identity too long")  # unreachable from requests: both forms are bounded

    @property
    def limit_key(self) -> str:
        """Whom per-caller limits count against: the identity, else the client address, else the session."""
        if self.identity:
            return self.identity
        return f"addr:{self.client_hash}" if self.client_hash else f"session:{self.session}"


class Identities:
    """Derives callers from requests and issues anonymous identities."""

    def __init__(
        self,
        receipts: Receipts,
        secret: bytes,
        *,
        trusted_proxies: int = 0,
        session_ttl_s: float = 12 * 3600,
        max_sessions: int = 100_000,
    ) -> None:
        self.receipts = receipts
        self._address_salt = hmac.new(secret, b"llmjp-demo/client-hash", hashlib.sha256).digest()
        self._pseudonym_key = hmac.new(secret, b"llmjp-demo/pseudonym", hashlib.sha256).digest()
        self._reply_key = hmac.new(secret, b"llmjp-demo/reply", hashlib.sha256).digest()
        self.trusted_proxies = trusted_proxies
        self._ttl = session_ttl_s
        self._max_sessions = max_sessions
        self._sessions: OrderedDict[str, tuple[str, float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    # -- deriving ---------------------------------------------------------------

    def caller(self, request: gr.Request | None, profile: gr.OAuthProfile | None, receipt: object) -> Caller:
        """The caller of ``request``: account, then receipt, then this session's accepted id, else no identity."""
        session = _session_of(request)
        username = _username_of(profile)
        client_hash = self._client_hash(request)
        anon_id: str | None = None
        if not username:
            if (valid := self.receipts.read(receipt)) is not None:
                anon_id = valid.anon_id
            elif session is not None:
                anon_id = self._session_id(session, client_hash)
        identity = f"hf:{username}" if username else self.pseudonym(anon_id) if anon_id else None
        return Caller(identity, username, _user_agent(request), client_hash, session, anon_id)

    def issue(self, caller: Caller, terms_id: str, terms_sha256: str) -> tuple[Caller, str]:
        """``caller`` with an identity, and the receipt to give back ('' when signed in).

        An anonymous caller gets a fresh random id unless it already has one (a
        receipt or an earlier acceptance in this session); the id goes into the
        receipt and, for same-session API clients, into server-side state.
        """
        if caller.username:
            return caller, ""
        anon_id = caller.anon_id or secrets.token_urlsafe(16)  # 128 random bits, 22 characters
        if caller.session is not None:
            self._remember(caller.session, anon_id, caller.client_hash)
        receipt = self.receipts.issue(Receipt(anon_id, terms_id, terms_sha256))
        return replace(caller, identity=self.pseudonym(anon_id), anon_id=anon_id), receipt

    def sign_reply(self, rid: str, identity: str | None, turns: list[dict[str, str]]) -> str:
        """A digest of reply ``rid`` as sent to ``identity`` with the turns up to it, keyed by the server secret."""
        text = json.dumps([rid, identity, turns], ensure_ascii=False, sort_keys=True)
        return hmac.new(self._reply_key, text.encode(), hashlib.sha256).hexdigest()

    def pseudonym(self, anon_id: str) -> str:
        """The identity recorded for an anonymous id: a keyed hash that reveals nothing reusable."""
        return "anon:" + hmac.new(self._pseudonym_key, anon_id.encode(), hashlib.sha256).hexdigest()[:32]

    # -- same-session memory (bounded, expiring) --------------------------------

    def _session_id(self, session: str, client_hash: str | None) -> str | None:
        # A session hash travels in query strings (and so in proxies' logs):
        # it only stands for the id from the address that accepted in it.
        with self._lock:
            found = self._sessions.get(session)
            if found is None:
                return None
            anon_id, expires, address = found
            if expires < time.monotonic():
                del self._sessions[session]
                return None
            return anon_id if address == client_hash else None

    def _remember(self, session: str, anon_id: str, client_hash: str | None) -> None:
        with self._lock:
            self._sessions[session] = (anon_id, time.monotonic() + self._ttl, client_hash)
            self._sessions.move_to_end(session)
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)

    # -- client address ----------------------------------------------------------

    def _client_hash(self, request: gr.Request | None) -> str | None:
        """A salted hash of the client's address: repeat visits can be told apart, the address is never kept."""
        return self._hash(client_address(request, self.trusted_proxies))

    def address_hash(self, headers: list[tuple[bytes, bytes]], peer: str | None) -> str | None:
        """The same hash from a raw ASGI request (the guard, before Gradio has read it)."""
        forwarded = [v.decode("latin-1") for k, v in headers if k.lower() == b"x-forwarded-for"]
        return self._hash(address_of(forwarded, peer, self.trusted_proxies))

    def _hash(self, address: str | None) -> str | None:
        if not address:
            return None
        return hmac.new(self._address_salt, address.encode(), hashlib.sha256).hexdigest()[:32]


def client_address(request: gr.Request | None, trusted_proxies: int) -> str | None:
    """The client's address as the nearest trusted proxy saw it (see ``address_of``)."""
    if request is None:
        return None
    headers = getattr(request, "headers", None) or {}
    getlist = getattr(headers, "getlist", None)
    forwarded = getlist("x-forwarded-for") if getlist else [headers.get("x-forwarded-for", "")]
    host = getattr(getattr(request, "client", None), "host", None)
    return address_of(forwarded, str(host) if host else None, trusted_proxies)


def address_of(forwarded: list[str], peer: str | None, trusted_proxies: int) -> str | None:
    """The client's address from the ``X-Forwarded-For`` lines and the connection's peer.

    Each proxy appends the address it received from to ``X-Forwarded-For``, so
    with ``trusted_proxies`` proxies in front of the app the client is the
    entry that many places from the right; entries further left were written
    by the client and prove nothing. A proxy may add its own header line
    rather than extend the last one (HAProxy's ``option forwardfor``): the
    lines are one list, joined in order, so a line the client sent first
    cannot pass for the proxy's. With no proxy, the connection's peer.
    """
    if trusted_proxies > 0:
        entries = [e.strip() for line in forwarded for e in line.split(",") if e.strip()]
        if len(entries) >= trusted_proxies:
            return entries[-trusted_proxies][:64]
    return peer[:64] if peer else None


def _session_of(request: gr.Request | None) -> str | None:
    session_hash = getattr(request, "session_hash", None) if request is not None else None
    if session_hash is None:
        return None
    if not isinstance(session_hash, str) or not SESSION_HASH.fullmatch(session_hash):
        raise InvalidSession()
    return session_hash


def _username_of(profile: gr.OAuthProfile | None) -> str | None:
    username = getattr(profile, "username", None) if profile is not None else None
    if not username:
        return None
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise InvalidInput("アカウント名が不正です。", "Invalid account name.")
    return username


def _user_agent(request: gr.Request | None) -> str | None:
    headers = getattr(request, "headers", None) or {}
    agent = headers.get("user-agent")
    return agent[:_USER_AGENT_MAX] if agent else None
