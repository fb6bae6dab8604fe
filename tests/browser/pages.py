"""Steps the browser tests share (import from `tests.browser.pages`): signing in and screenshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser.world import PASSWORD

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "artifacts" / "screenshots"


def screenshot(page: Any, name: str) -> Path:
    """Save the whole page as var/artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, username: str, *, at: str = "/dashboard/login/") -> None:
    """Sign in through a login form (the dashboard's or the admin's) as a person would."""
    page.goto(at)
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit], input[type=submit]")
