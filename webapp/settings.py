"""The one settings object, read once from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from limits import parse
from pydantic import AliasChoices, AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from db.settings import DatabaseSettings, spaces_storage
from inference import hub
from inference.registry import Server

MODEL_MODES = ("auto", "real", "tiny", "all")


def _default_hub_cache() -> Path | None:
    # Without persistent storage a Space downloads every checkpoint again after each restart.
    storage = spaces_storage()
    return storage / "huggingface" / "hub" if storage else None


def _ids(value: str) -> list[str]:
    """A list of model ids from a comma-separated string."""
    return [part.strip() for part in value.split(",") if part.strip()]


class RemoteModel(BaseModel):
    """Where one registry model is served over the OpenAI API (``LLMJP_REMOTE_MODELS``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: AnyHttpUrl = Field(description="The server's OpenAI API root, e.g. http://gpu-1:8000/v1.")
    model: str | None = Field(None, description="The name the server knows it by; the hub repo id when unset.")
    server: Server = Field(Server.VLLM, description="'vllm' or 'transformers' (transformers serve).")
    api_key: SecretStr | None = Field(None, description="This server's key; LLMJP_REMOTE_API_KEY when unset.")


class Settings(DatabaseSettings):
    """Configuration of the demo. Each field is an environment variable (see README).

    The database's own fields (``data_dir``, ``database_url``, the secret and audit keys) come from
    ``DatabaseSettings``, which the database command line reads alone.
    """

    model_config = SettingsConfigDict(env_prefix="LLMJP_", extra="ignore", frozen=True)

    default_model: str | None = Field(None, description="Model selected on arrival.")
    models: str = Field(
        "auto",
        description="'auto' (real checkpoints when the hub is reachable, else tiny ones too), 'real', 'tiny', "
        "'all', or a comma-separated list of model ids to offer.",
    )
    preload: str = Field("", description="Comma-separated model ids loaded at start-up, in the background.")
    warm_up_s: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="Seconds after start-up before torch and transformers are imported and preloads begin "
        "(the page is served without them).",
    )
    revisions: dict[str, str] = Field(
        default_factory=dict,
        description='Hub revisions (commits) to load, as JSON: {"llm-jp-3.1-1.8b-instruct4": "<commit>"}.',
    )
    hub_cache: Path | None = Field(
        default_factory=_default_hub_cache,
        description="Where checkpoints are downloaded; on a Space with persistent storage, under /data.",
    )
    model_paths: dict[str, str] = Field(
        default_factory=dict,
        description='Local directories for registry ids, as JSON: {"llm-jp-3.1-1.8b-instruct4": "/models/1.8b"}.',
    )
    max_message_chars: int = Field(4000, ge=1, description="Longest accepted chat message, in characters.")
    max_loaded_models: int = Field(1, ge=1, description="Models kept in memory at once.")
    max_batch: int = Field(
        8, ge=1, le=256, description="Requests to one loaded model generated together (batched); 1 turns batching off."
    )
    max_queue: int = Field(
        16, ge=0, le=10_000, description="Requests that may wait per model server; more are told it is busy."
    )
    stall_s: float = Field(
        60.0,
        ge=1.0,
        le=3600.0,
        description="A model's generation loop that finishes no step for this long, with replies in hand, "
        "is taken to be stuck: its replies end with a message and a fresh loop takes over.",
    )
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="What generates for the models this machine serves: 'transformers' (this process), 'vllm' "
        "(one vLLM server process per model, started and watched by the app) or 'auto' (vLLM when a GPU and the "
        "engine environment are found; never on ZeroGPU).",
    )
    engine_python: Path = Field(
        Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python",
        description="The engine environment's Python (./dev run makes .venv-vllm on a GPU machine).",
    )
    engine_command: str = Field(
        "",
        description="The engine's command line, with {python} {model} {name} {port} {dtype} {context} "
        "{gpu_share} filled in per model; vllm serve when empty.",
    )
    engine_start_timeout_s: float = Field(
        900.0, gt=0, le=7200, description="How long an engine may take to answer /health before it is reported."
    )
    engine_gpu_memory: float = Field(
        0.9, gt=0, le=1, description="The share of GPU memory the engines take together, split by model size."
    )
    remote_models: dict[str, RemoteModel] = Field(
        default_factory=dict,
        description='Registry ids served by OpenAI-compatible servers, as JSON: {"llm-jp-3.1-8x13b-instruct4": {"base_url": "http://gpu-1:8000/v1"}}.',
    )
    remote_api_key: SecretStr | None = Field(
        None, description="API key for the remote servers that have none of their own."
    )
    remote_concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight at once per remote server.")
    hf_token: SecretStr | None = Field(None, validation_alias=AliasChoices("HF_TOKEN", "LLMJP_HF_TOKEN"))
    receipt_days: int = Field(90, ge=1, le=3650, description="How long a browser's receipt is honoured.")
    oauth: bool = Field(
        default_factory=lambda: bool(os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_SECRET")),
        description="'Sign in with Hugging Face'; on by default in a Space with hf_oauth: true.",
    )
    admin_users: str = Field("", description="Comma-separated Hugging Face usernames allowed the Admin tab.")
    admin_token: SecretStr | None = Field(None, description="Token that grants the admin endpoints.")
    contact_retention_days: int | None = Field(
        None, ge=1, description="Erase contact fields older than this many days; unset keeps them."
    )
    hub_offline: bool = Field(False, validation_alias=AliasChoices("HF_HUB_OFFLINE", "LLMJP_HUB_OFFLINE"))
    admin_grant_minutes: int = Field(
        30, ge=1, le=24 * 60, description="How long the page's admin sign-in lasts before the token is asked again."
    )
    trusted_proxies: int = Field(
        default_factory=lambda: 1 if os.environ.get("SPACE_ID") else 0,
        ge=0,
        le=8,
        description="Proxies in front of the app that append to X-Forwarded-For (1 on Spaces, else 0).",
    )
    rate_chat: str = Field("20/minute", description="Chat requests per caller (identity, else address).")
    rate_chat_address: str = Field("60/minute", description="Chat requests per client address.")
    rate_consent: str = Field("10/minute", description="Acceptances, withdrawals and acknowledgements per caller.")
    rate_consent_address: str = Field("30/minute", description="The same per client address.")
    rate_new_identity_address: str = Field(
        "60/hour", description="New anonymous identities (first acceptances) per client address."
    )
    rate_events_address: str = Field(
        "20/second;600/minute",
        description="Events of any kind (page or API, every route) per client address, counted before Gradio reads them.",
    )
    max_waiting_events: int = Field(
        256, ge=1, le=100_000, description="Events one concurrency group may hold waiting; beyond it 'busy'."
    )
    max_sessions: int = Field(
        1000,
        ge=10,
        le=100_000,
        description="Sessions whose page state Gradio keeps in memory; the least recently used beyond it are dropped.",
    )
    max_connections: int = Field(
        1000, ge=10, le=100_000, description="Connections and requests the server holds at once; beyond it 503."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="A connection with no request in progress is closed after this many seconds."
    )
    keep_alive_s: float = Field(5.0, gt=0, le=600, description="An idle keep-alive connection is closed after this.")
    max_replies_per_identity: int = Field(
        2, ge=1, le=64, description="Replies one caller may have waiting or running at once."
    )
    max_replies_per_address: int = Field(
        6, ge=1, le=1024, description="Replies one client address may have waiting or running at once."
    )
    allowed_origins: str = Field(
        "", description="Comma-separated extra origins allowed to call the app from a browser when sign-in is on."
    )
    max_file_size: str = Field("1mb", description="Largest upload Gradio accepts (the app itself takes none).")

    @field_validator(
        "rate_chat",
        "rate_chat_address",
        "rate_consent",
        "rate_consent_address",
        "rate_new_identity_address",
        "rate_events_address",
    )
    @classmethod
    def _rate(cls, value: str) -> str:
        try:
            for part in filter(None, (p.strip() for p in value.split(";"))):
                parse(part)
        except ValueError as exc:
            raise ValueError(f"not a rate such as '20/minute': {value!r}") from exc
        return value

    @field_validator("models")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        from inference import CHECKPOINTS, TINY_MODELS

        if value in MODEL_MODES:
            return value
        known = {s.id for s in CHECKPOINTS + TINY_MODELS}
        ids = _ids(value)
        if not ids or (unknown := [i for i in ids if i not in known]):
            raise ValueError(
                f"LLMJP_MODELS must be one of {', '.join(MODEL_MODES)} or a comma-separated list of model ids; "
                f"unknown: {unknown if ids else value!r}"
            )
        return ",".join(ids)

    @field_validator("engine_command")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        from inference.servers.engines import PLACEHOLDERS

        try:
            value.format(**dict.fromkeys(PLACEHOLDERS, ""))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"LLMJP_ENGINE_COMMAND may use only {{{'}, {'.join(PLACEHOLDERS)}}}: {exc}") from None
        return value

    @property
    def model_ids(self) -> list[str] | None:
        """The ids ``models`` lists, or None when it names a mode."""
        return None if self.models in MODEL_MODES else _ids(self.models)

    @property
    def preload_ids(self) -> list[str]:
        """Models to load at start-up."""
        return _ids(self.preload)

    @property
    def offline(self) -> bool:
        """Whether the hub must not be contacted at all."""
        return self.hub_offline or hub.offline_by_env()

    @property
    def models_dir(self) -> Path:
        """Where tiny test models are built and cached."""
        return self.data_dir / "models"

    @property
    def admins(self) -> frozenset[str]:
        """Hugging Face usernames with access to the Admin tab."""
        return frozenset(u.strip() for u in self.admin_users.split(",") if u.strip())

    @property
    def token(self) -> str | None:
        """The hub token, for gated repositories; never logged."""
        return self.hf_token.get_secret_value() if self.hf_token else None
