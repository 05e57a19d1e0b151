"""The howto pages' commands work as written (convention: howto/README.md, "Commands on these pages are tested")."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

HOWTO = ROOT / "howto"
PAGES = sorted(p.name for p in HOWTO.glob("*.md") if p.name != "README.md")
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.S | re.M)


def blocks(page: Path) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block of a page, in order."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(page.read_text())]


def prepare(workdir: Path, page: Path) -> None:
    """A scratch copy of sheeprl.py, the page's files, and a package copy when the page writes into it."""
    shutil.copy(ROOT / "sheeprl.py", workdir / "sheeprl.py")
    files = [(info, body) for info, body in blocks(page) if "file=" in info]
    if any(re.search(r"file=(sheeprl|configs)/", info) for info, _ in files):
        # The CLI finds configs/ beside the package it runs from: copy both.
        shutil.copytree(ROOT / "sheeprl", workdir / "sheeprl", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "configs", workdir / "configs")
    else:  # beside sheeprl.py the package must exist, or `import sheeprl` would find the script itself
        (workdir / "sheeprl").symlink_to(ROOT / "sheeprl", target_is_directory=True)
    for info, body in files:
        target = workdir / re.search(r"file=(\S+)", info).group(1)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)


@pytest.mark.parametrize("name", PAGES)
def test_runnable_commands_work_as_written(name, tmp_path):
    page = HOWTO / name
    runnable = [body for info, body in blocks(page) if info.split() == ["bash", "runnable"]]
    if not runnable:
        pytest.skip(f"{name} has no `bash runnable` block")
    prepare(tmp_path, page)
    shim = tmp_path / ".bin"  # `python` in the pages is this interpreter
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a symlink would lose the venv
    (shim / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    for body in runnable:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{name}:\n{body}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_every_page_is_indexed_and_its_images_exist():
    index = (HOWTO / "README.md").read_text()
    for name in PAGES:
        assert f"({name})" in index, f"howto/README.md does not link {name}"
    for page in HOWTO.glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (HOWTO / target).exists(), f"{page.name} links to a missing {target}"


def test_worked_example_matches_the_registered_behaviour(tmp_path):
    """The page's example output line is what --sheeprl_help prints for the example."""
    page = HOWTO / "register_algorithm.md"
    prepare(tmp_path, page)
    proc = subprocess.run(
        [sys.executable, "sheeprl.py", "--sheeprl_help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("reinforce ")]
    assert (
        line.split() == next(ln for ln in page.read_text().splitlines() if ln.strip().startswith("reinforce ")).split()
    )
