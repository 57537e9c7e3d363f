"""The model registry: every checkpoint the demo can serve, as data.

Facts come from the model cards (see MODELS.md in the project's shared notes):
architecture, prompt format, licence, dtype, the sampling the card uses, and
the memory the weights need. Look models up by exact id only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

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


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _billions(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


@dataclass(frozen=True, kw_only=True)
class Shape:
    """A checkpoint's sizes, as its card and config give them.

    Parameter counts follow from these for the four architectures here
    (tests check them against ``inference.local.memory``, which counts the real
    model classes exactly, and against the cards' published figures).
    """

    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    kv_heads: int | None = None
    """Grouped-query attention; None: as many as the heads."""
    experts: int = 0
    """Routed experts per layer of a mixture of experts; 0 for a dense model."""
    active_experts: int = 0
    positions: int = 0
    """Learned position embeddings (GPT-2); 0 for rotary."""
    tied: bool = False
    """The output layer shares the input embedding."""

    def _layer(self, arch: Architecture, experts: float) -> float:
        h, i = self.hidden, self.intermediate
        if arch in (Architecture.LLAMA, Architecture.MIXTRAL):
            kv = h * (self.kv_heads or self.heads) // self.heads
            attention = 2 * h * h + 2 * h * kv
            if arch is Architecture.MIXTRAL:
                return attention + experts * (3 * h * i + h) + 2 * h  # experts, router (counted per expert), norms
            return attention + 3 * h * i + 2 * h
        # GPT-2 and GPT-NeoX: attention and MLP with biases, two layer norms
        return 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h

    def _count(self, arch: Architecture, experts: float) -> int:
        h = self.hidden
        embeddings = self.vocab * h * (1 if self.tied else 2) + self.positions * h
        final_norm = h if arch in (Architecture.LLAMA, Architecture.MIXTRAL) else 2 * h
        return round(embeddings + self.layers * self._layer(arch, experts) + final_norm)

    def parameters(self, arch: Architecture) -> int:
        """All parameters of the model."""
        return self._count(arch, self.experts)

    def active_parameters(self, arch: Architecture) -> int:
        """Parameters applied to each token: the shared ones and ``active_experts`` of the experts.

        As the llm-jp-3.1 8x13b card counts them, the router's weights count
        in the same share as the experts'.
        """
        return self._count(arch, self.active_experts) if self.experts else self.parameters(arch)


# As the cards give them (layers × hidden × heads, context, vocabulary); the
# feed-forward width is the checkpoint config's, which the cards' parameter
# counts confirm. Values the cards do not state are marked where they occur.
LLMJP3_VOCAB = 99_487
LLMJP31_1_8B = Shape(layers=24, hidden=2048, heads=16, intermediate=7168, vocab=LLMJP3_VOCAB)
LLMJP31_13B = Shape(layers=40, hidden=5120, heads=40, intermediate=13824, vocab=LLMJP3_VOCAB)
LLMJP31_8X13B = dataclasses.replace(LLMJP31_13B, experts=8, active_experts=2)
# The card gives 96 × 12288 × 96 and "172B"; 16 KV heads and a 38,464-wide feed-forward
# are the released config's, not the card's.
LLMJP3_172B = Shape(layers=96, hidden=12288, heads=96, kv_heads=16, intermediate=38464, vocab=LLMJP3_VOCAB)
# GPT-2 converted from Megatron-DeepSpeed: 4 × hidden feed-forward, tied output, learned positions.
LLMJP_13B_V11 = Shape(layers=40, hidden=5120, heads=40, intermediate=20480, vocab=50_570, positions=2048, tied=True)
# The card gives 36 layers × 4864 and "10 billion parameters"; the 38 heads and the
# 65,536-piece vocabulary are the released config's, not the card's.
WEBLAB_10B = Shape(layers=36, hidden=4864, heads=38, intermediate=19456, vocab=65_536)

# The random-weight models inference.local.tiny builds (a test checks that they agree).
_TINY_LLAMA = Shape(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=2_611)
TINY_SHAPES = {
    Architecture.LLAMA: _TINY_LLAMA,
    Architecture.MIXTRAL: dataclasses.replace(_TINY_LLAMA, experts=8, active_experts=2),
    Architecture.GPT2: Shape(layers=2, hidden=64, heads=4, intermediate=256, vocab=2_611, positions=2048, tied=True),
    Architecture.GPT_NEOX: Shape(layers=2, hidden=64, heads=4, intermediate=256, vocab=2_611),
}


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One servable checkpoint."""

    id: str
    source: str
    """Hub repo id or local directory; for tiny models, the architecture to build."""
    label: str
    architecture: Architecture
    shape: Shape
    """The sizes in the checkpoint's config; parameter counts and memory are derived from them."""
    prompt_format: PromptFormat
    license: License
    dtype: str
    """The dtype the checkpoint was trained and published in (torch name)."""
    context: int
    sampling: SamplingOptions
    """The card's recommended sampling; the UI resets to it when the model is chosen."""
    gated: bool = False
    """The hub asks for an approved account's token before it serves the files."""
    tiny: bool = False
    """A random-weight model of the real architecture, built locally for offline use."""
    endpoint: Endpoint | None = None
    """Set when the model runs on a remote server instead of this machine."""
    engine: Server | None = None
    """Set when this machine serves the model through a server process the app starts and watches
    (``inference.servers.engines``: vLLM on a GPU); None: this process's transformers loop."""
    revision: str | None = None
    """The hub commit (or branch, or tag) to load; the newest on the main branch when unset."""

    @property
    def moe(self) -> bool:
        """A mixture of experts: only some of its parameters work on each token."""
        return self.shape.experts > 0

    @property
    def parameters(self) -> int:
        return self.shape.parameters(self.architecture)

    @property
    def active_parameters(self) -> int:
        """Parameters that work on each token: all of them for a dense model."""
        return self.shape.active_parameters(self.architecture)

    @property
    def weights_bytes(self) -> int:
        """Memory for the weights in the checkpoint's dtype, before the KV cache."""
        return self.parameters * DTYPE_BYTES[self.dtype]

    def config(self) -> Any:
        """A transformers config with the card's sizes (for random-weight models of the real shapes)."""
        from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, MixtralConfig

        shape, context = self.shape, self.context
        if self.architecture is Architecture.GPT2:
            return GPT2Config(
                vocab_size=shape.vocab, n_embd=shape.hidden, n_layer=shape.layers, n_head=shape.heads,
                n_inner=shape.intermediate, n_positions=shape.positions, tie_word_embeddings=shape.tied,
            )  # fmt: skip
        if self.architecture is Architecture.GPT_NEOX:
            return GPTNeoXConfig(
                vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                num_attention_heads=shape.heads, intermediate_size=shape.intermediate, max_position_embeddings=context,
                tie_word_embeddings=shape.tied,
            )  # fmt: skip
        llama: dict[str, Any] = {
            "vocab_size": shape.vocab, "hidden_size": shape.hidden, "intermediate_size": shape.intermediate,
            "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads or shape.heads, "max_position_embeddings": context,
            "tie_word_embeddings": shape.tied,
        }  # fmt: skip
        if self.architecture is Architecture.MIXTRAL:
            return MixtralConfig(**llama, num_local_experts=shape.experts, num_experts_per_tok=shape.active_experts)
        return LlamaConfig(**llama)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache memory one position of one reply takes, in the checkpoint's dtype."""
        shape = self.shape
        return (
            2 * shape.layers * (shape.kv_heads or shape.heads) * (shape.hidden // shape.heads) * DTYPE_BYTES[self.dtype]
        )

    @property
    def size_label(self) -> str:
        """Parameters in words, with the active share of a mixture of experts, for the model list."""
        total = _billions(self.parameters)
        return f"{total}, {_billions(self.active_parameters)} active" if self.moe else total


# No card passes top_k: their code samples with transformers' default, top_k=50.
_LLMJP3_SAMPLING = SamplingOptions(temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.05, max_new_tokens=100)
_V11_SAMPLING = SamplingOptions(temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.1, max_new_tokens=512)
_WEBLAB_SAMPLING = SamplingOptions(temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.0, max_new_tokens=100)
_COMPLETION_SAMPLING = SamplingOptions(
    temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.05, max_new_tokens=100
)


def _labelled(specs: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
    """Name each mixture of experts with its total and active parameters, as the model list shows it."""
    return tuple(dataclasses.replace(s, label=f"{s.label} (MoE: {s.size_label})") if s.moe else s for s in specs)


CHECKPOINTS: tuple[ModelSpec, ...] = _labelled(
    (
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
            shape=LLMJP31_1_8B,
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
            shape=LLMJP31_13B,
        ),
        ModelSpec(
            id="llm-jp-3.1-8x13b-instruct4",
            source="llm-jp/llm-jp-3.1-8x13b-instruct4",
            label="LLM-jp-3.1 8x13B instruct4",
            architecture=Architecture.MIXTRAL,
            prompt_format=PromptFormat.LLMJP3_CHAT,
            license=APACHE_2,
            dtype="bfloat16",
            context=4096,
            sampling=_LLMJP3_SAMPLING,
            shape=LLMJP31_8X13B,
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
            shape=LLMJP3_172B,
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
            shape=LLMJP_13B_V11,
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
            shape=WEBLAB_10B,
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
            shape=LLMJP31_1_8B,
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
            shape=WEBLAB_10B,
        ),
    )
)

# Sixteen tokens: a random-weight reply says nothing that a longer one would, and every reply in a test or a
# demo then costs the server about half the CPU that 64 did and the page about two thirds (0.45 s against 1.0,
# 0.9 s against 1.3, tiny Llama on two cores). A test that needs a long reply asks for it.
_TINY_SAMPLING = SamplingOptions(temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.05, max_new_tokens=16)


def _tiny(arch: Architecture, fmt: PromptFormat, *, context: int = 2048) -> ModelSpec:
    name = {Architecture.GPT_NEOX: "gptneox"}.get(arch, arch.value)
    return ModelSpec(
        id=f"tiny-{name}",
        source=arch.value,
        label=f"tiny-{name} (ランダム重みの試験用 / random-weight test model)",
        architecture=arch,
        prompt_format=fmt,
        license=TEST_ONLY,
        dtype="float32",
        context=context,
        sampling=_TINY_SAMPLING,
        shape=TINY_SHAPES[arch],
        tiny=True,
    )


# Random-weight stand-ins for the four real architectures, with the prompt
# format of the family each stands for, so the whole path runs offline.
TINY_MODELS: tuple[ModelSpec, ...] = (
    _tiny(Architecture.LLAMA, PromptFormat.LLMJP3_CHAT, context=4096),
    _tiny(Architecture.MIXTRAL, PromptFormat.LLMJP3_CHAT, context=4096),
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
