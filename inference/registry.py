"""The model registry: every checkpoint the demo can serve, as data.

Facts come from the model cards (see MODELS.md in the project's shared notes):
architecture, prompt format, licence, dtype, the sampling the card uses, and
the memory the weights need. Look models up by exact id only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from inference.errors import UnknownModel
from inference.prompts import PromptFormat
from inference.sampling import SamplingOptions


class Architecture(StrEnum):
    """The transformers model type, as in the checkpoint's ``config.json``."""

    LLAMA = "llama"
    MIXTRAL = "mixtral"
    GPT2 = "gpt2"
    GPT_NEOX = "gpt_neox"


@dataclass(frozen=True, kw_only=True)
class License:
    """A model's licence, shown beside it in the UI."""

    name: str
    url: str
    commercial_use: bool
    note_ja: str = ""
    note_en: str = ""

    @property
    def needs_acknowledgement(self) -> bool:
        """Non-commercial licences ask each user to acknowledge that restriction once."""
        return not self.commercial_use


APACHE_2 = License(name="Apache-2.0", url="https://www.apache.org/licenses/LICENSE-2.0", commercial_use=True)
CC_BY_NC_4 = License(
    name="CC BY-NC 4.0",
    url="https://creativecommons.org/licenses/by-nc/4.0/",
    commercial_use=False,
    note_ja="非営利目的でのみ利用できます。",
    note_en="Non-commercial use only.",
)
NII_172B_BETA1 = License(
    name="LLM-jp-3 172B beta1 利用規約 / Terms of Use",
    url="https://huggingface.co/llm-jp/llm-jp-3-172b-beta1-instruct",
    commercial_use=True,
    note_ja="NII の利用規約に同意した上で利用できます(規約タブ)。",
    note_en="Use is subject to the NII terms of use (Terms tab).",
)
TEST_ONLY = License(
    name="test model (random weights)",
    url="",
    commercial_use=True,
    note_ja="ランダムな重みの試験用モデルです。出力に意味はありません。",
    note_en="Random-weight test model: its output is meaningless.",
)


class Server(StrEnum):
    """The OpenAI-compatible server behind an endpoint; they take sampling options differently."""

    VLLM = "vllm"
    TRANSFORMERS = "transformers"
    """``transformers serve``."""


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where a model is served remotely. Its API key comes from settings, not from here."""

    base_url: str
    """The server's OpenAI API root, e.g. ``http://gpu-1:8000/v1``."""
    model: str
    """The name the server knows the model by."""
    server: Server = Server.VLLM


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One servable checkpoint."""

    id: str
    source: str
    """Hub repo id or local directory; for tiny models, the architecture to build."""
    label: str
    architecture: Architecture
    moe: bool = False
    prompt_format: PromptFormat
    license: License
    dtype: str
    """The dtype the checkpoint was trained and published in (torch name)."""
    context: int
    sampling: SamplingOptions
    """The card's recommended sampling; the UI resets to it when the model is chosen."""
    weights_gb: float
    """Memory for the weights alone, before the KV cache."""
    gated: bool = False
    tiny: bool = False
    """A random-weight model of the real architecture, built locally for offline use."""
    instruct: bool = True
    endpoint: Endpoint | None = None
    """Set when the model runs on a remote server instead of this machine."""


# No card passes top_k: their code samples with transformers' default, top_k=50.
_LLMJP3_SAMPLING = SamplingOptions(temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.05, max_new_tokens=100)
_V11_SAMPLING = SamplingOptions(temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.1, max_new_tokens=512)
_WEBLAB_SAMPLING = SamplingOptions(temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.0, max_new_tokens=100)
_COMPLETION_SAMPLING = SamplingOptions(
    temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.05, max_new_tokens=100
)

CHECKPOINTS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="llm-jp-3.1-1.8b-instruct4",
        source="llm-jp/llm-jp-3.1-1.8b-instruct4",
        label="LLM-jp-3.1 1.8B instruct4",
        architecture=Architecture.LLAMA,
        prompt_format=PromptFormat.LLMJP3_CHAT,
        license=APACHE_2,
        dtype="bfloat16",
        context=4096,
        sampling=_LLMJP3_SAMPLING,
        weights_gb=3.7,
    ),
    ModelSpec(
        id="llm-jp-3.1-13b-instruct4",
        source="llm-jp/llm-jp-3.1-13b-instruct4",
        label="LLM-jp-3.1 13B instruct4",
        architecture=Architecture.LLAMA,
        prompt_format=PromptFormat.LLMJP3_CHAT,
        license=APACHE_2,
        dtype="bfloat16",
        context=4096,
        sampling=_LLMJP3_SAMPLING,
        weights_gb=27.0,
    ),
    ModelSpec(
        id="llm-jp-3.1-8x13b-instruct4",
        source="llm-jp/llm-jp-3.1-8x13b-instruct4",
        label="LLM-jp-3.1 8x13B instruct4 (MoE)",
        architecture=Architecture.MIXTRAL,
        moe=True,
        prompt_format=PromptFormat.LLMJP3_CHAT,
        license=APACHE_2,
        dtype="bfloat16",
        context=4096,
        sampling=_LLMJP3_SAMPLING,
        weights_gb=146.0,
    ),
    ModelSpec(
        id="llm-jp-3-172b-beta1-instruct",
        source="llm-jp/llm-jp-3-172b-beta1-instruct",
        label="LLM-jp-3 172B beta1 instruct",
        architecture=Architecture.LLAMA,
        prompt_format=PromptFormat.LLMJP3_CHAT,
        license=NII_172B_BETA1,
        dtype="bfloat16",
        context=4096,
        sampling=_LLMJP3_SAMPLING,
        weights_gb=344.0,
        gated=True,
    ),
    ModelSpec(
        id="llm-jp-13b-instruct-v1.1",
        source="llm-jp/llm-jp-13b-instruct-full-dolly_en-dolly_ja-ichikara_003_001-oasst_en-oasst_ja-v1.1",
        label="LLM-jp-13B instruct v1.1",
        architecture=Architecture.GPT2,
        prompt_format=PromptFormat.LLMJP_V11_ALPACA,
        license=APACHE_2,
        dtype="float16",
        context=2048,
        sampling=_V11_SAMPLING,
        weights_gb=26.0,
    ),
    ModelSpec(
        id="weblab-10b-instruction-sft",
        source="matsuo-lab/weblab-10b-instruction-sft",
        label="weblab-10b instruction-sft",
        architecture=Architecture.GPT_NEOX,
        prompt_format=PromptFormat.WEBLAB_ALPACA,
        license=CC_BY_NC_4,
        dtype="float16",
        context=2048,
        sampling=_WEBLAB_SAMPLING,
        weights_gb=21.0,
    ),
    ModelSpec(
        id="llm-jp-3.1-1.8b",
        source="llm-jp/llm-jp-3.1-1.8b",
        label="LLM-jp-3.1 1.8B (base)",
        architecture=Architecture.LLAMA,
        prompt_format=PromptFormat.COMPLETION,
        license=APACHE_2,
        dtype="bfloat16",
        context=4096,
        sampling=_COMPLETION_SAMPLING,
        weights_gb=3.7,
        instruct=False,
    ),
    ModelSpec(
        id="weblab-10b",
        source="matsuo-lab/weblab-10b",
        label="weblab-10b (base)",
        architecture=Architecture.GPT_NEOX,
        prompt_format=PromptFormat.COMPLETION,
        license=CC_BY_NC_4,
        dtype="float16",
        context=2048,
        sampling=_WEBLAB_SAMPLING,
        weights_gb=21.0,
        instruct=False,
    ),
)

_TINY_SAMPLING = SamplingOptions(temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.05, max_new_tokens=64)


def _tiny(arch: Architecture, fmt: PromptFormat, *, moe: bool = False, context: int = 2048) -> ModelSpec:
    name = {Architecture.GPT_NEOX: "gptneox"}.get(arch, arch.value)
    return ModelSpec(
        id=f"tiny-{name}",
        source=arch.value,
        label=f"tiny-{name} (ランダム重みの試験用 / random-weight test model)",
        architecture=arch,
        moe=moe,
        prompt_format=fmt,
        license=TEST_ONLY,
        dtype="float32",
        context=context,
        sampling=_TINY_SAMPLING,
        weights_gb=0.01,
        tiny=True,
    )


# Random-weight stand-ins for the four real architectures, with the prompt
# format of the family each stands for, so the whole path runs offline.
TINY_MODELS: tuple[ModelSpec, ...] = (
    _tiny(Architecture.LLAMA, PromptFormat.LLMJP3_CHAT, context=4096),
    _tiny(Architecture.MIXTRAL, PromptFormat.LLMJP3_CHAT, moe=True, context=4096),
    _tiny(Architecture.GPT2, PromptFormat.LLMJP_V11_ALPACA),
    _tiny(Architecture.GPT_NEOX, PromptFormat.WEBLAB_ALPACA),
)

DEFAULT_MODEL = "llm-jp-3.1-1.8b-instruct4"
DEFAULT_TINY_MODEL = "tiny-llama"


@dataclass(frozen=True)
class Registry:
    """The models offered in this process, keyed by id, and the one selected on arrival."""

    specs: Mapping[str, ModelSpec]
    default_id: str

    @classmethod
    def of(cls, specs: Iterable[ModelSpec], default: str | None = None) -> Registry:
        """A registry holding ``specs`` in order; ``default`` must be one of them."""
        table = MappingProxyType({s.id: s for s in specs})
        if default is None:
            default = next((d for d in (DEFAULT_MODEL, DEFAULT_TINY_MODEL) if d in table), next(iter(table)))
        registry = cls(table, default)
        registry.get(default)  # an unknown default is a configuration error
        return registry

    def get(self, model_id: str) -> ModelSpec:
        """The spec for ``model_id``; raises ``UnknownModel`` for any other id."""
        try:
            return self.specs[model_id]
        except (KeyError, TypeError):
            # Echo a bounded, encodable prefix: the id may come from a stranger.
            shown = model_id[:64].encode("utf-8", "replace").decode() if isinstance(model_id, str) else "?"
            raise UnknownModel(shown, list(self.specs)) from None

    def ids(self) -> list[str]:
        """All ids, in display order."""
        return list(self.specs)
