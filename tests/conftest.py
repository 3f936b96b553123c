"""Shared test fixtures: running the CLI in-process, the bundled samples, JSON Schema validation."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Generator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import pytest
from click.testing import CliRunner, Result

from normcli.cli import cli

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"

# What every run sees unless a test overrides it: a fixed width, no colour, and none of the
# variables that would make rich colour (or size) its output differently on another machine.
BASE_ENV: dict[str, str | None] = {
    "COLUMNS": "200",
    "NO_COLOR": "1",
    "FORCE_COLOR": None,
    "TTY_COMPATIBLE": None,
    "TTY_INTERACTIVE": None,
    "LINES": None,
    "JUPYTER_COLUMNS": None,
    "JUPYTER_LINES": None,
}

_RUNS = pytest.StashKey[list[tuple[list[str], Result]]]()


class Run(Protocol):
    def __call__(
        self,
        *args: str | Path,
        code: int | None = 0,
        env: Mapping[str, str | None] | None = None,
    ) -> Result: ...


def command_line(argv: list[str]) -> str:
    """The run as one printable line: arguments with control characters shown as repr()."""
    return " ".join(["normcli", *(a if a.isprintable() else repr(a) for a in argv)])


def describe(argv: list[str], result: Result) -> str:
    """Everything a failing test needs to see about one run: stdout and stderr kept apart."""
    lines = [
        f"$ {command_line(argv)}",
        f"exit code: {result.exit_code}",
        "--- stdout ---",
        result.stdout,
        "--- stderr ---",
        result.stderr,
    ]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        lines += ["--- exception ---", "".join(traceback.format_exception(result.exception))]
    return "\n".join(lines)


@pytest.fixture
def run(request: pytest.FixtureRequest) -> Run:
    """Invoke `normcli ARGS...` in-process; assert the exit code `code` (None: don't check).

    stdout and stderr are kept apart (Click 8.2+); every run of a failing test is shown in its
    report, whichever assertion failed.
    """
    runs = request.node.stash.setdefault(_RUNS, [])

    def invoke(
        *args: str | Path,
        code: int | None = 0,
        env: Mapping[str, str | None] | None = None,
    ) -> Result:
        argv = [str(a) for a in args]
        result = CliRunner().invoke(cli, argv, prog_name="normcli", env={**BASE_ENV, **(env or {})})
        runs.append((argv, result))
        if code is not None:
            assert result.exit_code == code, describe(argv, result)
        return result

    return invoke


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for argv, result in item.stash.get(_RUNS, []):
            report.sections.append((command_line(argv), describe(argv, result)))
    return report


@pytest.fixture
def samples() -> Path:
    """The folder of bundled sample checkpoints (sample_checkpoints/ at the repository root)."""
    assert SAMPLES.is_dir(), f"missing {SAMPLES}; run `make samples`"
    return SAMPLES


@functools.cache
def load_schema(schema_name: str) -> dict[str, Any]:
    """A packaged JSON Schema, e.g. "inspect.v1", read as installed users get it."""
    filename = schema_name if schema_name.endswith(".json") else f"{schema_name}.json"
    schemas = resources.files("normcli").joinpath("schemas")
    text = schemas.joinpath(filename).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate_json(doc: Any, schema_name: str) -> None:
    """Fail the test unless `doc` (or each document of a list of them) matches the schema."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    for i, document in enumerate(doc if isinstance(doc, list) else [doc]):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        if errors:
            shown = "\n".join(f"  {e.json_path}: {e.message}" for e in errors[:10])
            pytest.fail(f"document {i} does not match {schema_name}:\n{shown}", pytrace=False)


@pytest.fixture(name="validate_json")
def validate_json_fixture() -> Callable[[Any, str], None]:
    return validate_json


@pytest.fixture(params=["numpy", "numba"])
def both_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the pure-numpy path and on the compiled one (forced even for small data)."""
    monkeypatch.setenv("NORMCLI_KERNELS", request.param)
    return str(request.param)
