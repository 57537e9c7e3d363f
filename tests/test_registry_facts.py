"""Registry facts are derived from each checkpoint's sizes and checked against the cards' own figures."""

from __future__ import annotations

import pytest

from inference import CHECKPOINTS, TINY_MODELS, Registry
from inference.local import memory, tiny

REGISTRY = Registry.of(CHECKPOINTS)


# (id, the card's figure, tolerance): exact counts where the card prints them, its rounded size otherwise.
# Source: the model cards in the project's shared notes (seeds/ and MODELS.md).
CARD_PARAMETERS = [
    ("llm-jp-3.1-1.8b-instruct4", 407_498_752 + 1_459_718_144, 0),  # embedding + non-embedding
    ("llm-jp-3.1-1.8b", 407_498_752 + 1_459_718_144, 0),
    ("llm-jp-3.1-13b-instruct4", 1_018_746_880 + 12_688_184_320, 0),
    ("llm-jp-3.1-8x13b-instruct4", 73_162_828_800, 0),  # "Total parameters"
    ("llm-jp-3-172b-beta1-instruct", 172e9, 0.005),  # "172B"
    ("llm-jp-13b-instruct-v1.1", 12.9e9, 0.005),  # "12.9B params"
    ("weblab-10b-instruction-sft", 10e9, 0.10),  # "10 billion parameters"
    ("weblab-10b", 10e9, 0.10),
]


@pytest.mark.parametrize(("model_id", "card", "tolerance"), CARD_PARAMETERS, ids=[r[0] for r in CARD_PARAMETERS])
def test_parameters_match_the_card(model_id: str, card: float, tolerance: float) -> None:
    assert REGISTRY.get(model_id).parameters == pytest.approx(card, rel=tolerance, abs=0)


def test_the_moe_active_parameters_match_the_card_and_show_in_the_model_list() -> None:
    spec = REGISTRY.get("llm-jp-3.1-8x13b-instruct4")
    assert spec.moe and spec.active_parameters == 22_200_806_400  # "Activated parameters"
    assert "73.2B" in spec.label and "22.2B active" in spec.label
    assert not any(s.moe for s in CHECKPOINTS if s is not spec)


@pytest.mark.parametrize("spec", CHECKPOINTS + TINY_MODELS, ids=lambda s: s.id)
def test_the_count_is_exactly_what_the_model_class_holds(spec) -> None:
    """The registry's arithmetic against transformers' own classes, instantiated on the meta device."""
    config = spec.config()
    assert spec.parameters == memory.parameter_count(config)


@pytest.mark.parametrize("spec", TINY_MODELS, ids=lambda s: s.id)
def test_tiny_models_are_the_shapes_the_registry_says(spec) -> None:
    config = tiny.tiny_config(spec.architecture, tiny.tiny_tokenizer())
    assert spec.parameters == memory.parameter_count(config)


@pytest.mark.parametrize(
    ("model_id", "weights_gb"),
    # MODELS.md rounds these: ~3.7, ~27 (the card's counts give 27.4), ~146, ~344, ~26, ~21 GB.
    [("llm-jp-3.1-1.8b-instruct4", 3.7), ("llm-jp-3.1-13b-instruct4", 27.4), ("llm-jp-3.1-8x13b-instruct4", 146.3),
     ("llm-jp-3-172b-beta1-instruct", 344.8), ("llm-jp-13b-instruct-v1.1", 25.7), ("weblab-10b-instruction-sft", 21.7)],
)  # fmt: skip
def test_weights_in_the_published_dtype(model_id: str, weights_gb: float) -> None:
    assert REGISTRY.get(model_id).weights_bytes / memory.GB == pytest.approx(weights_gb, abs=0.05)
