"""The repository layout keeps its promises: `platform/` never shadows the standard library."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()

PROBE = (
    "import platform, sys, pathlib; "
    "print(pathlib.Path(platform.__file__).resolve()); "
    "print(platform.python_version())"
)


def test_platform_folder_is_not_a_package() -> None:
    assert (ROOT / "platform").is_dir()
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert (ROOT / "platform" / "manage.py").is_file()
    assert (ROOT / "platform" / "tailor" / "__init__.py").is_file()


@pytest.mark.parametrize("cwd", ["root", "platform", "elsewhere"])
def test_import_platform_is_the_standard_library(cwd: str, tmp_path: Path) -> None:
    where = {"root": ROOT, "platform": ROOT / "platform", "elsewhere": tmp_path}[cwd]
    # With the project's own import path (as pytest, manage.py and the installed package see it).
    env_path = f"{ROOT / 'platform'}:{ROOT}"
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=where,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    module_file = Path(out[0])
    assert module_file.parent == STDLIB, f"`import platform` resolved to {module_file}"
    assert out[1] == sys.version.split()[0]


def test_tailor_package_imports_alongside_stdlib_platform() -> None:
    code = "import platform, tailor; print(platform.system()); print(tailor.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "Linux"
    assert Path(out[1]).resolve().is_relative_to(ROOT / "platform" / "tailor")


def test_fixed_top_level_layout() -> None:
    for name in ["pyproject.toml", "platform", "workers", "gpu_runner", "deploy", "tests", "docs",
                 "docker-compose.yml"]:
        assert (ROOT / name).exists(), f"{name} is part of the fixed layout"
