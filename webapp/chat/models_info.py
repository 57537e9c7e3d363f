"""What the chat offers about each model: its chat defaults and a public description."""

from __future__ import annotations

from typing import Any

from inference import ModelSpec, Registry, SamplingOptions

# The cards' max_new_tokens (100 for most) are for a short sample: a full
# Japanese answer needs several hundred tokens. The chat starts from this
# many (within the model's context); the card's own value stays shown.
CHAT_MAX_NEW_TOKENS = 1024


def chat_defaults(spec: ModelSpec) -> SamplingOptions:
    """The sampling a new chat with ``spec`` starts from: the card's, with room for a full answer."""
    card = spec.sampling
    if spec.tiny:
        return card  # random-weight test models say nothing worth a long wait
    longest = max(card.max_new_tokens, min(CHAT_MAX_NEW_TOKENS, spec.context // 2))
    return card.model_copy(update={"max_new_tokens": longest})


def engine_of(spec: ModelSpec) -> str:
    """What generates the model's replies: ``vllm`` (a server process: the app's own, or a remote one),
    ``transformers`` (this process, or a remote ``transformers serve``)."""
    if spec.endpoint is not None:
        return spec.endpoint.server.value
    return spec.engine.value if spec.engine is not None else "transformers"


def describe(spec: ModelSpec, *, loaded: bool, batch: int = 1) -> dict[str, Any]:
    """One model, as the ``/models`` endpoint lists it; ``batch`` replies are generated together."""
    reply_kv = spec.kv_bytes_per_token * spec.context
    return {
        "id": spec.id,
        "label": spec.label,
        "architecture": spec.architecture.value,
        "kind": "moe" if spec.moe else "dense",
        "parameters": spec.parameters,
        "active_parameters": spec.active_parameters,
        "size": spec.size_label,
        "context": spec.context,
        "licence": spec.license.name,
        "licence_url": spec.license.url,
        "needs_acknowledgement": spec.license.needs_acknowledgement,
        "test_model": spec.tiny,
        "remote": spec.endpoint is not None,
        "engine": engine_of(spec),
        "card_sampling": spec.sampling.model_dump(exclude={"seed"}),
        "default_sampling": chat_defaults(spec).model_dump(exclude={"seed"}),
        "loaded": loaded,
        # What serving it takes where it runs in the checkpoint's dtype (a GPU): the batch's KV cache
        # bounds how many replies run at once.
        "memory": {
            "weights_bytes": spec.weights_bytes,
            "kv_cache_bytes_per_reply": reply_kv,
            "batch": batch,
            "kv_cache_bytes_for_batch": reply_kv * batch,
        },
    }


def catalogue(registry: Registry, is_loaded: Any = None, batch: int = 1) -> list[dict[str, Any]]:
    """Every offered model, in display order; ``is_loaded(model_id)`` tells which are in memory."""
    return [describe(s, loaded=bool(is_loaded and is_loaded(s.id)), batch=batch) for s in registry.specs.values()]
