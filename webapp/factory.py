"""Assembling the app from settings: database, gate, models, page."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import gradio as gr

from db.engine import make_engine, session_factory, upgrade
from inference import CHECKPOINTS, TINY_MODELS, Backend, Inference, ModelSpec, Registry, hub, tiny
from inference.local import TransformersBackend
from inference.registry import Architecture, Endpoint
from inference.remote import RemoteBackend
from webapp import ui
from webapp.admin import Admin
from webapp.consent import Gate
from webapp.handlers import Handlers
from webapp.identity import Identities
from webapp.ratelimit import InFlight, RateLimits, Rates
from webapp.receipts import Receipts
from webapp.settings import Settings
from webapp.terms import Terms

log = logging.getLogger(__name__)


def catalog(settings: Settings) -> Registry:
    """The models to offer: real checkpoints when the hub can serve them, else tiny ones."""
    mode = settings.models
    if mode == "auto":
        offline = settings.offline or not hub.reachable()
        mode = "tiny" if offline else "real"
        log.info("hub %s: offering %s models", "unreachable or offline" if offline else "reachable", mode)
    specs = {"real": CHECKPOINTS, "tiny": TINY_MODELS, "all": CHECKPOINTS + TINY_MODELS}[mode]
    ids = {s.id for s in specs}
    for name, table in (("LLMJP_MODEL_PATHS", settings.model_paths), ("LLMJP_REMOTE_MODELS", settings.remote_models)):
        if unknown := set(table) - ids:
            raise ValueError(f"{name} names models that are not offered: {sorted(unknown)}")
    return Registry.of((_configured(s, settings) for s in specs), default=settings.default_model)


def _configured(spec: ModelSpec, settings: Settings) -> ModelSpec:
    """``spec`` with its local copy (loaded from its directory like a hub snapshot) or its server."""
    configured = spec
    if path := settings.model_paths.get(spec.id):
        configured = dataclasses.replace(configured, source=path, tiny=False)
    if remote := settings.remote_models.get(spec.id):
        # A server names a model by its hub id unless told otherwise (vllm serve <repo>).
        base_url = str(remote.base_url).rstrip("/")
        endpoint = Endpoint(base_url=base_url, model=remote.model or spec.source, server=remote.server)
        configured = dataclasses.replace(configured, endpoint=endpoint)
    return configured


def _remote_backend(settings: Settings) -> RemoteBackend:
    default = settings.remote_api_key
    keys = {
        str(r.base_url).rstrip("/"): key.get_secret_value()
        for r in settings.remote_models.values()
        if (key := r.api_key or default)
    }
    models_dir = settings.models_dir
    return RemoteBackend(
        api_keys=keys,
        hf_token=settings.token,
        offline=settings.offline,
        # A tiny model served remotely (tests) renders with the tokenizer built here.
        tokenizer_source=lambda spec: tiny.ensure(Architecture(spec.source), models_dir) if spec.tiny else spec.source,
    )


def create_app(settings: Settings, *, backend: Backend | None = None, terms: Terms | None = None) -> gr.Blocks:
    """The Gradio app for ``settings``. Loads no model: models load on first use.

    ``backend`` replaces the local transformers backend (tests wrap it to count
    tokens); ``terms`` replaces the shipped terms (tests change the text).
    """
    engine = make_engine(settings.resolved_database_url)
    keys = settings.audit_keyring()
    upgrade(engine, keys=keys)
    registry = catalog(settings)
    backend = backend or TransformersBackend(
        models_dir=settings.models_dir,
        hf_token=settings.token,
        max_loaded=settings.max_loaded_models,
        offline=settings.offline,
    )
    secret = settings.server_secret()
    sessions = session_factory(engine, keys)
    identities = Identities(
        Receipts(secret, max_age_days=settings.receipt_days), secret, trusted_proxies=settings.trusted_proxies
    )
    terms = terms or Terms.load()
    in_flight = InFlight(per_identity=settings.max_replies_per_identity, per_address=settings.max_replies_per_address)
    gate = Gate(
        sessions, terms, identities, on_withdraw=in_flight.cancel, retention_days=settings.contact_retention_days
    )
    gate.sweep()
    handlers = Handlers(
        gate=gate,
        inference=Inference(
            registry,
            backend,
            remote=_remote_backend(settings),
            max_queue=settings.max_queue,
            remote_concurrency=settings.remote_concurrency,
        ),
        max_message_chars=settings.max_message_chars,
        limits=RateLimits(
            {
                "chat": Rates(settings.rate_chat, settings.rate_chat_address),
                "consent": Rates(settings.rate_consent, settings.rate_consent_address),
            }
        ),
        in_flight=in_flight,
    )
    admin = Admin(
        sessions,
        users=settings.admins,
        token=settings.admin_token.get_secret_value() if settings.admin_token else None,
        secret=secret,
        grant_minutes=settings.admin_grant_minutes,
    )
    demo = ui.build(
        handlers=handlers,
        admin=admin,
        terms=terms,
        registry=registry,
        oauth=settings.oauth,
        secret=hashlib.sha256(secret + b"/browser-state").hexdigest(),
        sessions=sessions,
    )
    log.info("database %s; models %s", settings.database_url_redacted, ", ".join(registry.ids()))
    return demo
