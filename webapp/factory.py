"""Assembling the app from settings: database, gate, models, page."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import gradio as gr

from db.engine import make_engine, session_factory, upgrade
from inference import CHECKPOINTS, TINY_MODELS, Backend, Inference, Registry, hub
from inference.local import TransformersBackend
from webapp import ui
from webapp.admin import Admin
from webapp.consent import Gate
from webapp.handlers import Handlers
from webapp.identity import Identities
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
    unknown = set(settings.model_paths) - {s.id for s in specs}
    if unknown:
        raise ValueError(f"LLMJP_MODEL_PATHS names models that are not offered: {sorted(unknown)}")
    # A local copy is loaded from its directory, exactly like a hub snapshot.
    specs = tuple(
        dataclasses.replace(s, source=settings.model_paths[s.id], tiny=False) if s.id in settings.model_paths else s
        for s in specs
    )
    return Registry.of(specs, default=settings.default_model)


def create_app(settings: Settings, *, backend: Backend | None = None, terms: Terms | None = None) -> gr.Blocks:
    """The Gradio app for ``settings``. Loads no model: models load on first use.

    ``backend`` replaces the local transformers backend (tests wrap it to count
    tokens); ``terms`` replaces the shipped terms (tests change the text).
    """
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    registry = catalog(settings)
    backend = backend or TransformersBackend(
        models_dir=settings.models_dir,
        hf_token=settings.token,
        max_loaded=settings.max_loaded_models,
        offline=settings.offline,
    )
    secret = settings.server_secret()
    sessions = session_factory(engine)
    identities = Identities(Receipts(secret, max_age_days=settings.receipt_days), secret)
    terms = terms or Terms.load()
    handlers = Handlers(
        gate=Gate(sessions, terms, identities),
        inference=Inference(registry, backend),
        max_message_chars=settings.max_message_chars,
    )
    admin = Admin(
        sessions,
        identities,
        users=settings.admins,
        token=settings.admin_token.get_secret_value() if settings.admin_token else None,
    )
    demo = ui.build(
        handlers=handlers,
        admin=admin,
        terms=terms,
        registry=registry,
        oauth=settings.oauth,
        secret=hashlib.sha256(secret + b"/browser-state").hexdigest(),
    )
    log.info("database %s; models %s", settings.database_url_redacted, ", ".join(registry.ids()))
    return demo
