"""The packages' dependencies point one way: ``webapp`` uses ``db`` and ``inference``, never the reverse.

So the database command line starts without Gradio or torch, and inference can be
used (and benchmarked) without the web app or a database.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each package may not import, at any depth of its code (functions and TYPE_CHECKING blocks included).
FORBIDDEN = {
    "db": {"webapp", "inference", "gradio", "torch", "transformers"},
    "inference": {"webapp", "db", "gradio"},
}


def imported_packages(path: Path, package: str) -> dict[str, int]:
    """The top-level names ``path`` imports, each with the first line that does."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package if node.level else node.module or ""]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def test_the_parser_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import a.b\nfrom c import d\nfrom . import e\n"
        "def f():\n    import g\n"
        "if TYPE_CHECKING:\n    from h.i import j\n"
    )
    assert set(imported_packages(source, "db")) == {"a", "c", "db", "g", "h"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_one_way(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name, line in imported_packages(path, package).items()
        if name in FORBIDDEN[package]
    ]
    assert wrong == []


def subpackage_edges(root: Path) -> dict[str, set[str]]:
    """Which of ``root``'s subpackages each of them imports (its own top-level modules are not counted)."""
    package = root.name
    subpackages = {path.parent.name for path in root.glob("*/__init__.py")}
    edges: dict[str, set[str]] = {name: set() for name in subpackages}
    for name in subpackages:
        for path in (root / name).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    modules = [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                for module in modules:
                    parts = module.split(".")
                    if parts[0] == package and len(parts) > 1 and parts[1] in subpackages and parts[1] != name:
                        edges[name].add(parts[1])
    return edges


def test_a_cycle_between_subpackages_is_seen(tmp_path: Path) -> None:
    for name, source in {"a": "from pkg.b import x\n", "b": "from pkg import a\n"}.items():
        (tmp_path / "pkg" / name).mkdir(parents=True)
        (tmp_path / "pkg" / name / "__init__.py").write_text(source)
    edges = subpackage_edges(tmp_path / "pkg")
    assert edges == {"a": {"b"}, "b": {"a"}}
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(edges).static_order())


@pytest.mark.parametrize("package", ["webapp", "inference"])
def test_subpackages_import_each_other_without_cycles(package: str) -> None:
    """Each subpackage is a layer: the gate at the bottom, the page's building blocks on top of the rest."""
    edges = subpackage_edges(ROOT / package)
    assert len(edges) >= 2, edges  # the subpackages were found
    tuple(graphlib.TopologicalSorter(edges).static_order())  # raises CycleError naming the cycle


@pytest.mark.parametrize(
    "code",
    [
        # The database command line, as an operator runs it.
        "import runpy, sys; sys.argv = ['db', '--help']; runpy.run_module('db', run_name='__main__')",
        # Settings are read (and validated) before the app is built, by tools and tests that need no Gradio.
        "from webapp.settings import Settings; Settings(rate_chat='5/second;100/hour')",
        "import db.engine, db.audit, db.export, db.settings",
    ],
)
def test_light_entry_points_leave_heavy_packages_unimported(code: str) -> None:
    check = f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\nprint(sorted({{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(ast.literal_eval(out.stdout.splitlines()[-1]))
    assert "db" in loaded or "webapp" in loaded  # the code above did run
    assert loaded.isdisjoint({"gradio", "torch", "transformers"}), loaded & {"gradio", "torch", "transformers"}


def test_gradio_is_imported_without_its_stub_writer(tmp_path: Path) -> None:
    """Through the app's package, Gradio's import skips rewriting its type stubs, and nothing else changes:
    components still get their events, and the app's page builds."""
    check = (
        "import webapp, gradio, gradio.component_meta as meta\n"
        "from webapp import gradio_import\n"
        "assert meta.create_or_modify_pyi is gradio_import._no_stub, meta.create_or_modify_pyi\n"
        "assert callable(gradio.Textbox().submit) and callable(gradio.Chatbot().retry)\n"
        "from webapp.factory import create_app\n"
        "from webapp.settings import Settings\n"
        f"create_app(Settings(data_dir={str(tmp_path)!r}, models='tiny', hub_offline=True))\n"
        "print('built')\n"
    )
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == "built"


def test_gradio_imported_before_the_app_writes_no_stub_into_the_app() -> None:
    """Gradio imported first (a script of one's own): the app's component still writes no ``.pyi`` beside it."""
    check = (
        "import gradio, gradio.component_meta as meta\n"
        "import webapp.ui.conversation\n"
        "from webapp import gradio_import\n"
        "assert meta.create_or_modify_pyi is gradio_import._no_stub, meta.create_or_modify_pyi\n"
        "print('imported')\n"
    )
    stub = ROOT / "webapp" / "ui" / "conversation.pyi"
    assert not stub.exists()
    try:
        out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.splitlines()[-1] == "imported"
        assert not stub.exists()
    finally:
        stub.unlink(missing_ok=True)  # a failure leaves no file in the source tree to fail the next run with
