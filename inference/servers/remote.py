"""The remote backend: models on OpenAI-compatible servers (vLLM in production, ``transformers serve``).

The prompt is rendered here with the model's own tokenizer and sent to
``/v1/completions``, so a remote model sees byte for byte the prompt a local
one would, whichever family it is (two of them have no chat template the
server could apply). The two servers take sampling options differently:

- vLLM takes ``top_k``, ``repetition_penalty`` and ``add_special_tokens`` as
  extra top-level fields.
- ``transformers serve`` rejects those fields (422), and samples only when
  ``do_sample`` is switched on in a ``generation_config`` JSON string, which
  then replaces the model's own generation config. It also always adds the
  tokenizer's special tokens, so a BOS the template wrote is left out.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import openai
from transformers import AutoTokenizer

from inference import hub, prompts
from inference.errors import AppError, GenerationFailed, ModelUnavailable
from inference.progress import Outcome, Status
from inference.prompts import Message, Prompt
from inference.registry import Endpoint, ModelSpec, Server
from inference.sampling import SamplingOptions

log = logging.getLogger(__name__)

# Connecting must be quick; a read may wait for a busy server's prefill.
TIMEOUT = openai.Timeout(120.0, connect=5.0)


def request_body(endpoint: Endpoint, options: SamplingOptions, max_tokens: int, eos: int | None, pad: int | None):
    """The ``/v1/completions`` fields, beyond the prompt, that ``endpoint``'s server accepts.

    A seed reaches vLLM (per-request seeded sampling); ``transformers serve``
    has no per-request seed, so a seeded request there is not reproducible.
    """
    greedy = options.temperature == 0.0
    if endpoint.server is Server.TRANSFORMERS:
        config: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "do_sample": not greedy,
            "repetition_penalty": options.repetition_penalty,
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else eos,
        }
        if not greedy:
            config |= {"temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k}
        return {"max_tokens": max_tokens, "extra_body": {"generation_config": json.dumps(config)}}
    seed = {} if options.seed is None else {"seed": options.seed}
    return {
        "max_tokens": max_tokens,
        # The last chunk then carries the server's own token counts: the reply's statistics.
        "stream_options": {"include_usage": True},
        "temperature": options.temperature,  # vLLM decodes greedily at 0
        "top_p": options.top_p,
        **seed,
        "extra_body": {
            "top_k": options.top_k or -1,  # -1 is "off" in every vLLM version
            "repetition_penalty": options.repetition_penalty,
            "add_special_tokens": False,  # the template wrote the BOS itself
        },
    }


def _strip_added_bos(tokenizer: Any, text: str) -> str:
    """``text`` without its leading BOS when the tokenizer would add one anyway."""
    bos = tokenizer.bos_token
    if not bos or not text.startswith(bos):
        return text
    adds_bos = tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    return text[len(bos) :] if adds_bos else text


class RemoteBackend:
    """Streams completions from the server each spec's ``endpoint`` names."""

    def __init__(
        self,
        *,
        api_keys: dict[str, str] | None = None,
        hf_token: str | None = None,
        offline: bool = False,
        tokenizer_source: Callable[[ModelSpec], Any] | None = None,
    ) -> None:
        self._api_keys = api_keys or {}
        self._token = hf_token
        self._offline = offline
        self._tokenizer_source = tokenizer_source or (lambda spec: spec.source)
        self._clients: dict[str, openai.OpenAI] = {}
        self._tokenizers: dict[str, Any] = {}
        # Separate locks: a first request fetching a tokenizer must not hold up the HTTP clients of others.
        self._clients_lock = threading.Lock()
        self._tokenizers_lock = threading.Lock()

    def _client(self, endpoint: Endpoint) -> openai.OpenAI:
        with self._clients_lock:
            if endpoint.base_url not in self._clients:
                # vLLM without --api-key accepts any key; the client insists on one.
                key = self._api_keys.get(endpoint.base_url) or "none"
                self._clients[endpoint.base_url] = openai.OpenAI(
                    base_url=endpoint.base_url, api_key=key, timeout=TIMEOUT, max_retries=0
                )
            return self._clients[endpoint.base_url]

    def tokenizer(self, spec: ModelSpec) -> Any:
        """The model's own tokenizer (a few MB), to render and measure prompts here."""
        with self._tokenizers_lock:
            if spec.id not in self._tokenizers:
                try:
                    self._tokenizers[spec.id] = AutoTokenizer.from_pretrained(
                        self._tokenizer_source(spec), token=self._token, local_files_only=self._offline
                    )
                except (OSError, ValueError) as exc:
                    raise hub.explain(spec, exc) from exc
            return self._tokenizers[spec.id]

    def prepare(
        self,
        spec: ModelSpec,
        messages: Sequence[Message],
        options: SamplingOptions,
        *,
        report: Callable[[Status], None] | None = None,
    ) -> Prompt:
        """Render and tokenise the conversation with the model's tokenizer, oldest turns dropped to fit."""
        tok = self.tokenizer(spec)
        return prompts.prepare(tok, spec.prompt_format, messages, spec.context, options.max_new_tokens)

    def release(self, spec: ModelSpec) -> None:
        """Nothing is held here: the server keeps its own models."""

    def generate(
        self,
        spec: ModelSpec,
        messages: Sequence[Message] | Prompt,
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
        *,
        report: Callable[[Status], None] | None = None,
        make_room: threading.Event | None = None,
    ) -> Outcome:
        """Stream a reply from the model's server; closing the stream on stop makes the server abort it.

        ``make_room`` is not acted on: the server batches, and its places are its own to share.
        """
        endpoint = spec.endpoint
        if endpoint is None:
            raise ValueError(f"{spec.id} has no endpoint")
        prompt = messages if isinstance(messages, Prompt) else self.prepare(spec, messages, options)
        tok = self.tokenizer(spec)
        text = _strip_added_bos(tok, prompt.text) if endpoint.server is Server.TRANSFORMERS else prompt.text
        body = request_body(endpoint, options, prompt.max_new_tokens, tok.eos_token_id, tok.pad_token_id)
        reply, reason, usage = [], "length", None
        client = self._client(endpoint).completions.with_streaming_response
        try:
            # The server's events are read as JSON here, not as the client's typed chunks: building those
            # took most of the app's CPU when it relayed many streams (about 60% at 50 streams of 100 tok/s).
            with client.create(model=endpoint.model, prompt=text, stream=True, **body) as response:
                for delta, finish_reason, counted in _events(response):
                    if stop.is_set():
                        # Leaving the block closes the connection; the server aborts the request.
                        reason = "cancelled"
                        break
                    usage, reason = counted or usage, finish_reason or reason
                    # Like the local decoder: a byte the server could not
                    # decode on its own is never shown as U+FFFD.
                    if delta := delta.replace("\ufffd", ""):
                        reply.append(delta)
                        emit(delta)
        except openai.APIError as exc:
            raise _explain(spec, exc) from exc
        except _Unreadable as exc:
            log.warning("remote %s sent an event that is not a completion: %s", spec.id, exc)
            raise GenerationFailed(
                f"{spec.label} のモデルサーバーの応答を読めませんでした。もう一度お試しください。",
                f"The reply from the server for {spec.label} could not be read. Please try again.",
            ) from exc
        finish = reason if reason in ("stop", "length", "cancelled") else "stop"
        if usage is not None:  # vLLM counts what it generated
            counts = usage
        else:  # a server without usage (or a stopped reply): measured here with the same tokenizer
            counts = (len(prompt.ids), len(tok("".join(reply), add_special_tokens=False).input_ids))
        return Outcome(*counts, finish, spec.revision, prompt.dropped_turns)  # type: ignore[arg-type]


class _Unreadable(ValueError):
    """An event that is not one of a streamed completion's."""


def _events(response: Any) -> Iterator[tuple[str, str | None, tuple[int, int] | None]]:
    """Each server-sent event of a streamed completion, up to ``[DONE]``, as (text, finish reason, (prompt,
    completion) tokens); an error event raises ``openai.APIError``, as the client's own stream does, and an
    event of another shape ``_Unreadable``."""
    data: list[str] = []
    for line in itertools.chain(response.iter_lines(), [""]):  # the last event may lack its blank line
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
            continue
        if line or not data:
            continue  # a comment, an event name, or a blank line between events
        event, data = "\n".join(data), []
        if event.startswith("[DONE]"):
            return
        try:
            chunk = json.loads(event)
        except ValueError as exc:
            raise _Unreadable("not JSON") from exc
        if not isinstance(chunk, dict):
            raise _Unreadable("not an object")
        if error := chunk.get("error"):
            message = error.get("message") if isinstance(error, dict) else None
            raise openai.APIError(
                message if isinstance(message, str) and message else "An error occurred during streaming",
                request=response.http_request,
                body=error,
            )
        choices, usage = chunk.get("choices") or [{}], chunk.get("usage")
        choice = choices[0] if isinstance(choices, list) else None
        if not isinstance(choice, dict) or not isinstance(usage, dict | None):
            raise _Unreadable("no choice")
        text, reason = choice.get("text") or "", choice.get("finish_reason")
        counts = usage and (usage.get("prompt_tokens"), usage.get("completion_tokens"))
        if not isinstance(text, str) or not isinstance(reason, str | None):
            raise _Unreadable("no text")
        if counts and not all(isinstance(n, int) and n >= 0 for n in counts):
            raise _Unreadable("no token counts")
        yield text, reason, counts  # type: ignore[misc]


def _explain(spec: ModelSpec, exc: openai.APIError) -> AppError:
    """A visitor's message for a server error; the server's address stays in the log."""
    host = urlsplit(spec.endpoint.base_url).netloc if spec.endpoint else "?"
    log.warning("remote %s at %s failed: %s: %s", spec.id, host, type(exc).__name__, exc.message)
    label = spec.label
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return ModelUnavailable(
            f"{label} のモデルサーバーに接続できません。しばらくしてからもう一度お試しください。",
            f"Cannot reach the server for {label}. Please try again later.",
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelUnavailable(
            f"{label} のモデルサーバーが API キーを受け付けません。管理者に連絡してください。",
            f"The server for {label} refused this demo's API key. Please tell the administrator.",
        )
    if isinstance(exc, openai.NotFoundError):
        return ModelUnavailable(
            f"{label} のモデルサーバーにこのモデルがありません。管理者に連絡してください。",
            f"The server for {label} does not serve this model. Please tell the administrator.",
        )
    if isinstance(exc, openai.RateLimitError):
        return ModelUnavailable(
            f"{label} のモデルサーバーが混み合っています。しばらくしてからもう一度お試しください。",
            f"The server for {label} is busy. Please try again shortly.",
        )
    status = f" (HTTP {exc.status_code})" if isinstance(exc, openai.APIStatusError) else ""
    return GenerationFailed(
        f"{label} のモデルサーバーがエラーを返しました{status}。もう一度お試しください。",
        f"The server for {label} returned an error{status}. Please try again.",
    )
