"""The compiled kernels' cache from a read-only install: compiled once into the user's cache
folder, loaded from there on later runs, and compiled afresh (once) after an upgrade."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import normcli

pytest.importorskip("numba")

# run in a fresh interpreter on the read-only copy; prints what numba's cache did
CHILD = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import normcli
from normcli import kernels
folder = os.path.dirname(normcli.__file__)
assert folder.startswith(sys.argv[1]), folder
try:  # the test means nothing where the package folder may be written
    open(os.path.join(folder, "probe"), "w").close()
    sys.exit("the package folder is writable")
except OSError:
    pass
notes = []
found = kernels.load(lambda: notes.append("compiling"))
assert found is not None
assert found.reduce(np.arange(1000, dtype=np.float32)).l1 == 499500.0
from normcli import compiled, sigbus
done = compiled.stats.stats
print(json.dumps({
    "notes": notes,
    "compiled": sum(done.cache_misses.values()),
    "loaded": sum(done.cache_hits.values()),
    "cache": done.cache_path,
    # the SIGBUS handler is cached too (Linux only)
    "handler": None if sigbus._handler is None else sigbus._handler.cache_hits,
}))
"""


def read_only(tree: Path, writable: bool = False) -> None:
    for path in [tree, *tree.rglob("*")]:
        mode = path.stat().st_mode
        write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~write)


def run(site: Path, cache: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(XDG_CACHE_HOME=str(cache), HOME=str(cache.parent))
    command = [sys.executable, "-c", CHILD, str(site)]
    if os.geteuid() == 0:  # root writes through file modes: mount the copy read-only instead
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare: no read-only folder to test with")
        mount = 'mount --bind -o ro "$0" "$0" && exec "$@"'
        command = ["unshare", "--mount", "sh", "-c", mount, str(site), *command]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode and os.geteuid() == 0 and "mount" in done.stderr:
        pytest.skip(f"cannot mount a read-only copy here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_kernels_cached_from_a_read_only_install_and_recompiled_after_an_upgrade(
    tmp_path: Path,
) -> None:
    site, cache = tmp_path / "site", tmp_path / "home" / ".cache"
    package = Path(normcli.__file__).parent
    shutil.copytree(package, site / "normcli", ignore=shutil.ignore_patterns("__pycache__"))
    read_only(site)
    try:
        first = run(site, cache)
        assert first["notes"] == ["compiling"] and first["compiled"] > 0
        assert first["cache"].startswith(str(cache)), first["cache"]
        again = run(site, cache)
        assert again == {**again, "notes": [], "compiled": 0} and again["loaded"] > 0
        assert (first["handler"], again["handler"]) in ((0, 1), (None, None))

        # an upgrade brings other source: what the cache holds is not used for it
        read_only(site, writable=True)
        with open(site / "normcli" / "compiled.py", "a") as f:
            f.write("\n# a newer release\n")
        read_only(site)
        upgraded = run(site, cache)
        assert upgraded["notes"] == ["compiling"] and upgraded["compiled"] > 0
        assert run(site, cache)["compiled"] == 0
    finally:
        read_only(site, writable=True)


@pytest.mark.parametrize("terminal", [True, False])
def test_the_first_compile_is_one_line_on_a_terminal_and_nothing_elsewhere(terminal: bool) -> None:
    from rich.console import Console

    from normcli.report.console import ProgressBar

    err = io.StringIO()
    ProgressBar("inspect x", Console(file=err, force_terminal=terminal, width=100)).compiling()
    lines = err.getvalue().splitlines()
    assert len(lines) == (1 if terminal else 0)
    assert all("compiling" in line for line in lines)
