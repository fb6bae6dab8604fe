"""Fixtures of the browser tests: headless Chromium driven by Playwright against a live server of the
platform (pytest-django's `live_server`, on the test database).

The browser is the system's Chromium (`TAILOR_CHROMIUM`, else `chromium` / `chromium-browser` /
`google-chrome` on PATH); Playwright's own browser downloads are never used. Where none is installed and
the tests run as root with apt, the session installs Debian's `chromium` first. Only where no browser can
be had are the tests skipped, with a warning that says why and how to fix it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless in a container: no sandbox (no user namespaces as root), no GPU, and nothing that reaches
# beyond the machine (component updates, sync, background requests).
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
APT_TIMEOUT = 900


def _find_chromium() -> str | None:
    configured = os.environ.get("TAILOR_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _install_chromium() -> str:
    """Install Debian's chromium when we are root and apt is here; return what went wrong otherwise."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root, so it cannot be installed here (apt-get install chromium)"
    if not shutil.which("apt-get"):
        return "apt-get is not available to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=APT_TIMEOUT)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = getattr(exc, "stderr", b"") or b""
        return f"`{' '.join(exc.cmd)}` failed: {output.decode(errors='replace')[-500:]}"
    return ""


def _unavailable(reason: str) -> None:
    message = f"Browser tests skipped: {reason}"
    warnings.warn(message, pytest.PytestWarning, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """The path of a Chromium to drive, installed first where that is possible."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is missing (pip install -e '.[dev]')")
    configured = os.environ.get("TAILOR_CHROMIUM")
    if configured and not Path(configured).is_file():
        _unavailable(f"TAILOR_CHROMIUM={configured} is not a file")
    path = _find_chromium()
    if path is None:
        problem = _install_chromium()
        path = _find_chromium()
        if path is None:
            _unavailable(f"no Chromium found ({', '.join(BROWSER_NAMES)} or TAILOR_CHROMIUM); {problem}")
    return str(path)


@pytest.fixture(scope="session")
def browser(chromium_executable: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio loop on this thread, which makes Django refuse ORM calls
    # from the test body (SynchronousOnlyOperation); the tests only call the ORM between browser steps.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as driver:
            chromium = driver.chromium.launch(
                executable_path=chromium_executable, headless=True, args=BROWSER_ARGS
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser: Any, live_server: Any) -> Iterator[Any]:
    """A fresh browser tab (own cookies) whose relative URLs go to the live server."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    yield tab
    context.close()
