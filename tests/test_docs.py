"""docs/ARCHITECTURE.md stays the map of the code: every module and package is on it, and the
README links it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_every_module_and_package_is_on_the_map() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text("utf-8")
    package = ROOT / "normcli"
    rooms = {p.name + "/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.name for p in package.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert rooms and modules  # the package was found
    assert sorted(room for room in rooms | modules if f"`{room}`" not in text) == []


def test_readme_links_the_map() -> None:
    assert "docs/ARCHITECTURE.md" in (ROOT / "README.md").read_text("utf-8")
