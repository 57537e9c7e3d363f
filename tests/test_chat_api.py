"""The public API beyond consent: /chat with the model's defaults, /models, and errors that name the API."""

from __future__ import annotations

import itertools

import pytest
from gradio_client.exceptions import AppError

from inference import CHECKPOINTS, TINY_MODELS
from tests.conftest import RunningApp
from tests.test_app_http import FORM
from webapp.chat.models_info import chat_defaults


@pytest.fixture
def accepted(running_app: RunningApp):
    client = running_app.client()
    client.predict(**FORM, api_name="/accept_terms")
    return client


def test_the_short_call_streams(accepted) -> None:
    """Only a message and a model: the sampling comes from the model, and the reply streams."""
    job = accepted.submit(message="こんにちは", model_id="tiny-llama", api_name="/chat")
    updates = list(job)
    assert job.result()
    assert len(updates) >= 2 and all(later.startswith(earlier) for earlier, later in itertools.pairwise(updates))


def test_left_out_sampling_equals_the_models_defaults(accepted) -> None:
    """A seeded call without sampling values replies exactly as one passing the listed defaults."""
    listed = {m["id"]: m for m in accepted.predict(api_name="/models")}
    defaults = listed["tiny-llama"]["default_sampling"]
    short = accepted.predict(message="富士山", model_id="tiny-llama", seed=7, api_name="/chat")
    explicit = accepted.predict(message="富士山", model_id="tiny-llama", seed=7, **defaults, api_name="/chat")
    assert short == explicit
    other = accepted.predict(
        message="富士山", model_id="tiny-llama", seed=7, **(defaults | {"temperature": 1.9}), api_name="/chat"
    )
    assert other != short  # the comparison can fail: other values give another reply


def test_models_lists_the_registry(running_app: RunningApp) -> None:
    listed = running_app.client().predict(api_name="/models")
    offered = [*CHECKPOINTS, *TINY_MODELS]
    assert [m["id"] for m in listed] == [s.id for s in offered]
    for model, spec in zip(listed, offered, strict=True):
        assert model["label"] == spec.label
        assert model["architecture"] == spec.architecture.value
        assert model["kind"] == ("moe" if spec.moe else "dense")
        assert model["context"] == spec.context
        assert model["licence"] == spec.license.name
        assert model["needs_acknowledgement"] is spec.license.needs_acknowledgement
        assert model["card_sampling"] == spec.sampling.model_dump(exclude={"seed"})
        assert model["default_sampling"] == chat_defaults(spec).model_dump(exclude={"seed"})
        assert isinstance(model["loaded"], bool)
        assert (model["parameters"], model["active_parameters"]) == (spec.parameters, spec.active_parameters)
    moe = next(m for m in listed if m["id"] == "llm-jp-3.1-8x13b-instruct4")
    assert moe["active_parameters"] < moe["parameters"] and "active" in moe["size"]


def test_api_lists_the_offered_models_for_model_id(running_app: RunningApp) -> None:
    api = running_app.client().view_api(return_format="dict", print_info=False)["named_endpoints"]
    model_id = next(p for p in api["/chat"]["parameters"] if p["parameter_name"] == "model_id")
    assert model_id["type"]["enum"] == [s.id for s in (*CHECKPOINTS, *TINY_MODELS)]
    optional = {p["parameter_name"] for p in api["/chat"]["parameters"] if p["parameter_has_default"]}
    assert {"temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed"} <= optional


def test_api_errors_name_the_api_not_the_tab(running_app: RunningApp, accepted) -> None:
    with pytest.raises(AppError) as refused:
        running_app.client().predict(message="こんにちは", model_id="tiny-llama", api_name="/chat")
    assert "/accept_terms" in str(refused.value) and "tab" not in str(refused.value).lower()
    assert "タブ" not in str(refused.value)
    with pytest.raises(AppError) as licence:
        accepted.predict(message="こんにちは", model_id="weblab-10b-instruction-sft", api_name="/chat")
    assert "/acknowledge_licence" in str(licence.value)


def test_a_seed_out_of_range_is_refused_in_both_languages(accepted) -> None:
    with pytest.raises(AppError) as refused:
        accepted.predict(message="こんにちは", model_id="tiny-llama", seed=-1, api_name="/chat")
    assert "seed は" in str(refused.value) and "seed must be in" in str(refused.value)
