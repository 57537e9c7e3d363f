"""Assembling the app from settings: database, gate, models, page."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from pathlib import Path

import gradio as gr

from db.engine import make_engine, session_factory, upgrade
from inference import CHECKPOINTS, TINY_MODELS, Backend, Inference, ModelSpec, Registry, hub
from inference.lazy import Deferred, heavy_import
from inference.registry import DEFAULT_TINY_MODEL, Architecture, Endpoint, Server
from inference.servers import engines as engine_processes
from webapp.admin.audit import Admin
from webapp.boundary.doors import Doors
from webapp.boundary.ratelimit import InFlight, RateLimits, Rates
from webapp.chat.availability import Availability
from webapp.gate.consent import Gate
from webapp.gate.identity import Identities
from webapp.gate.receipts import Receipts
from webapp.gate.terms import Terms
from webapp.handlers import Handlers
from webapp.settings import Settings
from webapp.ui import page as ui

log = logging.getLogger(__name__)


def catalog(settings: Settings, reachable: hub.Reachability | None = None) -> Registry:
    """The models to offer: a list of ids, or by mode; ``auto`` offers real checkpoints when the hub answers.

    When the hub does not answer at start-up, ``auto`` offers the tiny models
    first and the real ones after them: the hub is asked again (with growing
    pauses) whenever one is chosen, so they load once it is back, and a
    checkpoint already in the cache loads at once.
    """
    everything = CHECKPOINTS + TINY_MODELS
    if (ids := settings.model_ids) is not None:
        by_id = {s.id: s for s in everything}
        specs: tuple[ModelSpec, ...] = tuple(by_id[i] for i in ids)
    else:
        mode = settings.models
        if mode == "auto":
            if settings.offline:
                mode = "tiny"
            else:
                up = (reachable or hub.Reachability())()
                mode = "real" if up else "tiny-first"
                log.info("hub %s: offering %s models", "reachable" if up else "unreachable", mode)
        specs = {"real": CHECKPOINTS, "tiny": TINY_MODELS, "all": everything, "tiny-first": TINY_MODELS + CHECKPOINTS}[
            mode
        ]
    offered = {s.id for s in specs}
    engine = engine_processes.choose(
        settings.engine, python=settings.engine_python, custom_command=bool(settings.engine_command)
    )
    for name, table in (
        ("LLMJP_MODEL_PATHS", settings.model_paths),
        ("LLMJP_REMOTE_MODELS", settings.remote_models),
        ("LLMJP_REVISIONS", settings.revisions),
        ("LLMJP_PRELOAD", dict.fromkeys(settings.preload_ids)),
    ):
        if unknown := set(table) - offered:
            raise ValueError(f"{name} names models that are not offered: {sorted(unknown)}")
    # An operator's list is in their order of preference; without the hub, a model that can answer comes first.
    default = settings.default_model or (specs[0].id if ids else DEFAULT_TINY_MODEL if specs[0].tiny else None)
    return Registry.of((_configured(s, settings, engine) for s in specs), default=default)


def _configured(spec: ModelSpec, settings: Settings, engine: Server | None = None) -> ModelSpec:
    """``spec`` with its local copy (loaded from its directory like a hub snapshot), its server, or its engine."""
    configured = spec
    if revision := settings.revisions.get(spec.id):
        configured = dataclasses.replace(configured, revision=revision)
    if path := settings.model_paths.get(spec.id):
        configured = dataclasses.replace(configured, source=path, tiny=False)
    if remote := settings.remote_models.get(spec.id):
        # A server names a model by its hub id unless told otherwise (vllm serve <repo>).
        base_url = str(remote.base_url).rstrip("/")
        endpoint = Endpoint(base_url=base_url, model=remote.model or spec.source, server=remote.server)
        configured = dataclasses.replace(configured, endpoint=endpoint)
    elif engine is not None:
        configured = dataclasses.replace(configured, engine=engine)
    return configured


def _remote_backend(settings: Settings) -> Backend:
    from inference.local import tiny
    from inference.servers.remote import RemoteBackend

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


def _local_backend(settings: Settings, reachable: hub.Reachability) -> Backend:
    from inference.local.backend import TransformersBackend

    return TransformersBackend(
        models_dir=settings.models_dir,
        hf_token=settings.token,
        max_loaded=settings.max_loaded_models,
        # Asked again (with back-off) on each load, so a hub that comes back is used.
        offline=lambda: settings.offline or not reachable(),
        max_batch=settings.max_batch,
        hub_cache=settings.hub_cache,
        stall_s=settings.stall_s,
    )


def _engines(settings: Settings, specs: list[ModelSpec], reachable: hub.Reachability) -> engine_processes.Engines:
    """The engine processes' backend: each model's weights found (or downloaded) here, then served by its own."""
    from inference.progress import Downloading

    models_dir, cache = settings.models_dir, str(settings.hub_cache) if settings.hub_cache else None

    def source(spec: ModelSpec, report) -> tuple[str, str | None]:
        tiny = heavy_import("inference.local.tiny")  # on the preload's thread, beside the local backend's warm-up

        if spec.tiny:
            return str(tiny.ensure(Architecture(spec.source), models_dir)), None
        if Path(spec.source).is_dir():
            return spec.source, None
        try:
            path = hub.download(
                spec.source, token=settings.token, revision=spec.revision, cache_dir=cache,
                offline=settings.offline or not reachable(), report=lambda done, total: report(Downloading(done, total)),
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            raise hub.explain(spec, exc) from exc
        return path, Path(path).name  # the snapshot directory is named by its commit

    def remote() -> Backend:
        remote_backend = heavy_import("inference.servers.remote")  # on the preload's thread, as ``source``

        return remote_backend.RemoteBackend(
            hf_token=settings.token, offline=True, tokenizer_source=lambda s: source(s, lambda _: None)[0]
        )

    launch = engine_processes.Launch(
        command=settings.engine_command or engine_processes.VLLM_COMMAND,
        python=str(settings.engine_python),
        start_timeout_s=settings.engine_start_timeout_s,
        shares=engine_processes.gpu_shares(
            {s.id: s.weights_bytes for s in specs},
            total=settings.engine_gpu_memory,
            max_loaded=settings.max_loaded_models,
        ),
        env={"HF_HUB_OFFLINE": "1"},  # the weights are here already: the engine needs no hub
    )
    return engine_processes.Engines(launch, remote=remote, model_source=source, max_loaded=settings.max_loaded_models)


def _preload(backend: Backend, specs: list[ModelSpec]) -> None:
    """Load ``specs`` in turn; a visitor who asks for one meanwhile waits for the same load and sees it."""
    for spec in specs:
        if spec.endpoint is not None:
            continue
        try:
            backend.load(spec)  # type: ignore[attr-defined]
            log.info("preloaded %s", spec.id)
        except Exception:
            log.exception("preloading %s failed", spec.id)


def create_app(settings: Settings, *, backend: Backend | None = None, terms: Terms | None = None) -> gr.Blocks:
    """The Gradio app for ``settings``. Loads no model here: ``LLMJP_PRELOAD`` loads in the background.

    ``backend`` replaces the local transformers backend (tests wrap it to count
    tokens); ``terms`` replaces the shipped terms (tests change the text).
    """
    engine = make_engine(settings.resolved_database_url)
    keys = settings.audit_keyring()
    upgrade(engine, keys=keys)
    reachable = hub.Reachability()
    registry = catalog(settings, reachable)
    preloads = [registry.get(i) for i in settings.preload_ids]
    engines = None
    if served := [s for s in registry.specs.values() if s.engine is not None]:
        engines = _engines(settings, served, reachable)
        if started := [s for s in preloads if s.engine is not None]:
            timer = threading.Timer(settings.warm_up_s, _preload, args=(engines, started))
            timer.daemon = True
            timer.start()
    if backend is None:
        local = Deferred(lambda: _local_backend(settings, reachable), name="local backend")
        preload = [s for s in preloads if s.engine is None]
        # The page is served first; torch and transformers are imported a moment later, in the background.
        local.warm_up(settings.warm_up_s, then=lambda b: _preload(b, preload))
        backend = local
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
    # Offline means what loading would see: the setting, or a hub that does not answer now.
    availability = Availability(
        token=settings.token,
        offline=lambda: settings.offline or not reachable(),
        hub_cache=str(settings.hub_cache) if settings.hub_cache else None,
    )
    handlers = Handlers(
        gate=gate,
        inference=Inference(
            registry,
            backend,
            remote=Deferred(lambda: _remote_backend(settings), name="remote backend"),
            engines=engines,
            max_queue=settings.max_queue,
            max_batch=settings.max_batch,
            remote_concurrency=settings.remote_concurrency,
        ),
        max_message_chars=settings.max_message_chars,
        limits=RateLimits(
            {
                "chat": Rates(settings.rate_chat, settings.rate_chat_address),
                "consent": Rates(settings.rate_consent, settings.rate_consent_address),
                # Each first acceptance adds a row that stays: new identities are counted per address too.
                "new_identity": Rates("", settings.rate_new_identity_address),
                # Each change to conversations kept on the server rewrites the account's row: at most as
                # often as replies may come, in a count of its own so that keeping them costs no replies.
                "kept": Rates(settings.rate_chat, settings.rate_chat_address),
            }
        ),
        in_flight=in_flight,
        availability=availability,
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
    # Every route checks its event's inputs against these before Gradio reads them (webapp.boundary.guard).
    demo.llmjp_doors = Doors(  # type: ignore[attr-defined]
        demo,
        contexts=[spec.context for spec in registry.specs.values()],
        limits=RateLimits({"event": Rates("", settings.rate_events_address)}),
        identities=identities,
        max_waiting=settings.max_waiting_events,
    )
    log.info("database %s; models %s", settings.database_url_redacted, ", ".join(registry.ids()))
    return demo
