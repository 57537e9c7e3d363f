"""Assembling the app from settings: database, gate, models, page."""

from __future__ import annotations

import logging

import gradio as gr

from db.engine import make_engine, session_factory, upgrade
from inference import CHECKPOINTS, TINY_MODELS, Backend, Inference, Registry, hub
from inference.local import TransformersBackend
from webapp import ui
from webapp.consent import Consent
from webapp.handlers import Handlers
from webapp.settings import Settings
from webapp.terms import Terms

log = logging.getLogger(__name__)


def catalog(settings: Settings) -> Registry:
    """The models to offer: real checkpoints when the hub can serve them, else tiny ones."""
    mode = settings.models
    if mode == "auto":
        offline = settings.hub_offline or hub.offline_by_env() or not hub.reachable()
        mode = "tiny" if offline else "real"
        log.info("hub %s: offering %s models", "unreachable or offline" if offline else "reachable", mode)
    specs = {"real": CHECKPOINTS, "tiny": TINY_MODELS, "all": CHECKPOINTS + TINY_MODELS}[mode]
    return Registry.of(specs, default=settings.default_model)


def create_app(settings: Settings, *, backend: Backend | None = None) -> gr.Blocks:
    """The Gradio app for ``settings``. Loads no model: models load on first use.

    ``backend`` replaces the local transformers backend (tests wrap it to count tokens).
    """
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    registry = catalog(settings)
    backend = backend or TransformersBackend(
        models_dir=settings.models_dir, hf_token=settings.token, max_loaded=settings.max_loaded_models
    )
    handlers = Handlers(
        consent=Consent(session_factory(engine), Terms.load()),
        inference=Inference(registry, backend),
        max_message_chars=settings.max_message_chars,
    )
    demo = ui.build(handlers=handlers, terms=handlers.consent.terms, registry=registry)
    log.info("database %s; models %s", settings.database_url_redacted, ", ".join(registry.ids()))
    return demo
