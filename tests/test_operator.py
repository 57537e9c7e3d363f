"""What the operator controls: which models, which revisions, preloading, the hub cache, the Space's front matter."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from pydantic import ValidationError

from db import settings as db_settings
from inference import CHECKPOINTS, TINY_MODELS, hub
from webapp.factory import catalog
from webapp.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_a_list_of_ids_chooses_the_models_offered_in_that_order() -> None:
    registry = catalog(Settings(models="tiny-gpt2, llm-jp-3.1-1.8b-instruct4,tiny-llama"))
    assert registry.ids() == ["tiny-gpt2", "llm-jp-3.1-1.8b-instruct4", "tiny-llama"]
    assert registry.default_id == "tiny-gpt2"  # the first listed, unless LLMJP_DEFAULT_MODEL says otherwise


@pytest.mark.parametrize("value", ["gpt-4", "tiny-llama,1.8b", ",", "TINY"])
def test_unknown_ids_are_refused_at_start_up(value: str) -> None:
    with pytest.raises(ValidationError, match="LLMJP_MODELS must be one of auto, real, tiny, all or a comma"):
        Settings(models=value)


def test_revisions_are_pinned_per_model_and_must_name_offered_models() -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    registry = catalog(Settings(models="real", revisions={"llm-jp-3.1-13b-instruct4": commit}))
    assert registry.get("llm-jp-3.1-13b-instruct4").revision == commit
    assert registry.get("llm-jp-3.1-1.8b-instruct4").revision is None
    with pytest.raises(ValueError, match="LLMJP_REVISIONS"):
        catalog(Settings(models="tiny", revisions={"llm-jp-3.1-13b-instruct4": commit}))
    with pytest.raises(ValueError, match="LLMJP_PRELOAD"):
        catalog(Settings(models="tiny", preload="llm-jp-3.1-13b-instruct4"))


def test_auto_asks_the_hub_again_with_growing_pauses() -> None:
    now, answers, asked = [0.0], [False, False, False, True], []

    def check() -> bool:
        asked.append(now[0])
        return answers[len(asked) - 1]

    reachable = hub.Reachability(check, first_retry=30, max_retry=3600, clock=lambda: now[0])
    for t in (0, 10, 29, 31, 60, 91, 150, 211, 500, 3000):
        now[0] = t
        reachable()
    assert asked == [0, 31, 91, 211]  # pauses of 30, 60, 120 s after each failure, then the answer holds
    assert reachable()


def test_auto_without_the_hub_offers_tiny_models_first_and_the_real_ones_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    registry = catalog(Settings(), hub.Reachability(lambda: False))
    assert registry.default_id == "tiny-llama"
    assert registry.ids() == [s.id for s in TINY_MODELS + CHECKPOINTS]
    assert catalog(Settings(), hub.Reachability(lambda: True)).ids() == [s.id for s in CHECKPOINTS]


@pytest.mark.parametrize("space", [True, False])
def test_spaces_are_recognised_by_space_id_not_by_a_data_directory(
    space: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMJP_DATA_DIR")
    storage = tmp_path / "data"
    storage.mkdir()
    monkeypatch.setattr(db_settings, "SPACES_PERSISTENT_DIR", storage)
    if space:
        monkeypatch.setenv("SPACE_ID", "llm-jp/chat")
    else:
        monkeypatch.delenv("SPACE_ID", raising=False)
    settings = Settings()
    if space:  # persistent storage: the database and the downloaded checkpoints survive restarts
        assert settings.data_dir == storage and settings.hub_cache == storage / "huggingface" / "hub"
    else:  # a /data on some other machine is not ours to write to
        assert settings.data_dir == Path("data").resolve() and settings.hub_cache is None


def test_the_page_is_served_before_torch_is_imported_and_preloads_follow(tmp_path: Path) -> None:
    """In a fresh process, as deployed: the page answers at once; the preloaded model arrives afterwards."""
    # The launch and the first page take about 0.3 s on a busy machine: 3 s of warm-up leaves them room
    # without waiting long for the preload (8 s did; the app's default is 2 s).
    script = """
import sys, time, urllib.request
from webapp.factory import create_app
from webapp.settings import Settings
demo = create_app(Settings(models="tiny", preload="tiny-gpt2", warm_up_s=3))
_, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
assert urllib.request.urlopen(url).status == 200
print("served", "torch" in sys.modules, "transformers" in sys.modules, flush=True)
built = Settings().models_dir / "tiny-gpt2-v1" / "config.json"
deadline = time.monotonic() + 120
while not built.exists() and time.monotonic() < deadline:
    time.sleep(0.2)
time.sleep(1.0)
print("preloaded", built.exists(), "torch" in sys.modules, flush=True)
demo.close()
"""
    env = os.environ | {
        "LLMJP_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("served", "preloaded"))]
    assert lines == ["served False False", "preloaded True True"]


def test_front_matter_matches_the_registry() -> None:
    from huggingface_hub import SpaceCard
    from huggingface_hub._space_api import SpaceHardware, SpaceStorage

    data = SpaceCard.load(ROOT / "README.md").data
    sources = [s.source for s in CHECKPOINTS]
    assert data.sdk == "gradio" and data.app_file == "app.py"
    assert data.models == sources  # every checkpoint the demo can serve, linked to the Space
    preload = data.get("preload_from_hub")
    assert 0 < len(preload) <= 10  # the Spaces limit
    repos = [entry.split()[0] for entry in preload]
    assert set(repos) <= set(sources)
    # What is baked into the image must fit the hardware the Space suggests: a ZeroGPU slice (about 70 GB).
    assert data.suggested_hardware in {h.value for h in SpaceHardware}
    assert data.suggested_hardware == "zero-a10g"
    by_source = {s.source: s for s in CHECKPOINTS}
    assert all(by_source[r].endpoint is None and by_source[r].weights_bytes < 70e9 for r in repos)
    assert data.suggested_storage in {s.value for s in SpaceStorage}


def test_the_space_runs_the_python_the_project_requires() -> None:
    from huggingface_hub import SpaceCard

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    version = SpaceCard.load(ROOT / "README.md").data.python_version
    # A string: YAML would read 3.10 as the number 3.1.
    assert isinstance(version, str) and version in SpecifierSet(requires)
    # The oldest Python the project supports is the one its tests and tools (ruff, mypy) target.
    assert requires == f">={version}"


def _bounds(lines: list[str]) -> dict[str, tuple[frozenset[str], SpecifierSet]]:
    """Each package's extras and version bounds, by its normalised name."""
    return {canonicalize_name(req.name): (frozenset(req.extras), req.specifier) for req in map(Requirement, lines)}


def test_requirements_txt_has_the_bounds_of_pyproject() -> None:
    """A Space installs requirements.txt: each package with the extras and bounds pyproject.toml gives it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    space = _bounds([line for line in lines if line.strip() and not line.startswith("#")])
    # The app's dependencies, and the PostgreSQL driver so a Space can keep its log in a database server.
    assert space == _bounds(project["dependencies"] + project["optional-dependencies"]["postgres"])
