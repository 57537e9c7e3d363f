"""The registry holds every checkpoint of MODELS.md, as data, looked up by exact id."""

from __future__ import annotations

import pytest

from inference import CHECKPOINTS, TINY_MODELS, Inference, Registry, UnknownModel
from inference.local.backend import TransformersBackend
from inference.prompts import PromptFormat
from inference.registry import Architecture
from webapp.factory import catalog
from webapp.handlers import Handlers
from webapp.settings import Settings

# As MODELS.md gives them from the cards: (id, hub repo, architecture, format, dtype, context, licence, rep. penalty,
# max_new_tokens). Sizes and parameter counts are checked in test_registry_facts.py against the cards' figures.
# fmt: off
EXPECTED = [
    ("llm-jp-3.1-1.8b-instruct4", "llm-jp/llm-jp-3.1-1.8b-instruct4", "llama", "llm-jp-3-chat", "bfloat16", 4096, "Apache-2.0", 1.05, 100),
    ("llm-jp-3.1-13b-instruct4", "llm-jp/llm-jp-3.1-13b-instruct4", "llama", "llm-jp-3-chat", "bfloat16", 4096, "Apache-2.0", 1.05, 100),
    ("llm-jp-3.1-8x13b-instruct4", "llm-jp/llm-jp-3.1-8x13b-instruct4", "mixtral", "llm-jp-3-chat", "bfloat16", 4096, "Apache-2.0", 1.05, 100),
    ("llm-jp-3-172b-beta1-instruct", "llm-jp/llm-jp-3-172b-beta1-instruct", "llama", "llm-jp-3-chat", "bfloat16", 4096, "LLM-jp-3 172B beta1 利用規約 / Terms of Use", 1.05, 100),
    ("llm-jp-13b-instruct-v1.1", "llm-jp/llm-jp-13b-instruct-full-dolly_en-dolly_ja-ichikara_003_001-oasst_en-oasst_ja-v1.1", "gpt2", "llm-jp-v1.1-alpaca", "float16", 2048, "Apache-2.0", 1.1, 512),
    ("weblab-10b-instruction-sft", "matsuo-lab/weblab-10b-instruction-sft", "gpt_neox", "weblab-alpaca", "float16", 2048, "CC BY-NC 4.0", 1.0, 100),
    ("llm-jp-3.1-1.8b", "llm-jp/llm-jp-3.1-1.8b", "llama", "completion", "bfloat16", 4096, "Apache-2.0", 1.05, 100),
    ("weblab-10b", "matsuo-lab/weblab-10b", "gpt_neox", "completion", "float16", 2048, "CC BY-NC 4.0", 1.0, 100),
]
# fmt: on


@pytest.mark.parametrize("row", EXPECTED, ids=[r[0] for r in EXPECTED])
def test_checkpoint_facts(row: tuple) -> None:
    model_id, repo, arch, fmt, dtype, context, licence, rep, max_new = row
    spec = Registry.of(CHECKPOINTS).get(model_id)
    assert (spec.source, spec.architecture, spec.prompt_format, spec.dtype) == (
        repo,
        Architecture(arch),
        PromptFormat(fmt),
        dtype,
    )
    assert (spec.context, spec.license.name) == (context, licence)
    assert (spec.sampling.temperature, spec.sampling.top_p) == (0.7, 0.95)
    assert (spec.sampling.repetition_penalty, spec.sampling.max_new_tokens) == (rep, max_new)


def test_all_checkpoints_listed() -> None:
    assert [s.id for s in CHECKPOINTS] == [r[0] for r in EXPECTED]
    assert Registry.of(CHECKPOINTS).default_id == "llm-jp-3.1-1.8b-instruct4"
    assert Registry.of(CHECKPOINTS).get("llm-jp-3-172b-beta1-instruct").gated


def test_weblab_is_non_commercial() -> None:
    assert not Registry.of(CHECKPOINTS).get("weblab-10b-instruction-sft").license.commercial_use


@pytest.mark.parametrize("model_id", ["llm-jp-3.1", "1.8b", "LLM-JP-3.1-1.8B-INSTRUCT4", "", None, "tiny-llama "])
def test_lookup_is_exact(model_id: object) -> None:
    with pytest.raises(UnknownModel) as err:
        Registry.of(CHECKPOINTS).get(model_id)  # type: ignore[arg-type]
    assert "llm-jp-3.1-1.8b-instruct4" in err.value.en


def test_tiny_models_cover_the_four_architectures() -> None:
    assert {s.architecture for s in TINY_MODELS} == set(Architecture)
    assert all(s.tiny and s.id.startswith("tiny-") and "random" in s.label for s in TINY_MODELS)


@pytest.mark.parametrize(
    ("mode", "first"),
    [("tiny", "tiny-llama"), ("real", "llm-jp-3.1-1.8b-instruct4"), ("all", "llm-jp-3.1-1.8b-instruct4")],
)
def test_catalog_modes(mode: str, first: str) -> None:
    registry = catalog(Settings(models=mode))
    assert registry.default_id == first


def test_offline_auto_offers_tiny_models() -> None:
    assert catalog(Settings()).default_id == "tiny-llama"  # HF_HUB_OFFLINE=1 in every test


def test_configured_default_model() -> None:
    assert catalog(Settings(models="all", default_model="tiny-gpt2")).default_id == "tiny-gpt2"
    with pytest.raises(UnknownModel):
        catalog(Settings(models="tiny", default_model="llm-jp-3.1-1.8b-instruct4"))


@pytest.mark.parametrize(
    "model_id", ["weblab-10b-instruction-sft", "llm-jp-13b-instruct-v1.1", "llm-jp-3.1-1.8b-instruct4"]
)
def test_choosing_a_model_resets_controls_to_its_chat_defaults(model_id: str, tmp_path) -> None:
    """The card's sampling, with room for a full Japanese answer; the card's own length stays shown."""
    from webapp.chat.page import ChatPage

    registry = Registry.of(CHECKPOINTS)
    spec = registry.get(model_id)
    inference = Inference(registry, TransformersBackend(models_dir=tmp_path))  # loads nothing
    handlers = Handlers(gate=None, inference=inference, max_message_chars=10, limits=None, in_flight=None)  # type: ignore[arg-type]
    *values, card_line, licence = ChatPage(handlers, sessions=None).model_changed(model_id, "ja")  # type: ignore[arg-type]
    s = spec.sampling
    assert values[:4] == [s.temperature, s.top_p, s.top_k, s.repetition_penalty]
    assert values[4] >= max(s.max_new_tokens, 512)  # several hundred tokens: a whole Japanese answer
    assert f"max_new_tokens = {s.max_new_tokens}" in card_line
    assert spec.license.name in licence


def test_sampling_follows_what_the_cards_code_does() -> None:
    """No card passes top_k, so transformers' default of 50 applies there."""
    for spec in CHECKPOINTS:
        assert spec.sampling.top_k == 50, spec.id
        assert spec.sampling.temperature == 0.7 and spec.sampling.top_p == 0.95


def test_local_paths_replace_hub_repos(tmp_path) -> None:
    registry = catalog(Settings(models="all", model_paths={"llm-jp-3.1-13b-instruct4": str(tmp_path)}))
    assert registry.get("llm-jp-3.1-13b-instruct4").source == str(tmp_path)
    assert registry.get("llm-jp-3.1-1.8b-instruct4").source == "llm-jp/llm-jp-3.1-1.8b-instruct4"
    with pytest.raises(ValueError, match="not offered"):
        catalog(Settings(models="tiny", model_paths={"gpt-4": str(tmp_path)}))


def test_remote_models_from_settings() -> None:
    """A remote entry keeps the hub id as the served name, even when its tokenizer is a local directory."""
    from inference.registry import Server

    moe = "llm-jp-3.1-8x13b-instruct4"
    settings = Settings(
        models="real",
        model_paths={moe: "/models/8x13b-tokenizer"},
        remote_models={
            moe: {"base_url": "http://gpu-a:8000/v1/"},
            "llm-jp-3.1-13b-instruct4": {"base_url": "http://gpu-b:8000/v1", "model": "13b", "server": "transformers"},
        },
    )
    registry = catalog(settings)
    spec = registry.get(moe)
    assert spec.source == "/models/8x13b-tokenizer"
    assert (spec.endpoint.base_url, spec.endpoint.model, spec.endpoint.server) == (
        "http://gpu-a:8000/v1",
        "llm-jp/llm-jp-3.1-8x13b-instruct4",
        Server.VLLM,
    )
    assert registry.get("llm-jp-3.1-13b-instruct4").endpoint.server is Server.TRANSFORMERS
    assert registry.get("llm-jp-3.1-1.8b-instruct4").endpoint is None  # the rest stay local
    with pytest.raises(ValueError, match="LLMJP_REMOTE_MODELS"):
        catalog(Settings(models="tiny", remote_models={moe: {"base_url": "http://gpu-a:8000/v1"}}))
