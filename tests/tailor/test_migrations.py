"""The models and their migrations agree: a model change without a migration fails here, not in production."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_no_model_change_lacks_a_migration() -> None:
    out = io.StringIO()
    try:
        call_command("makemigrations", "teams", "files", "--check", "--dry-run", stdout=out)
    except SystemExit as exc:  # --check exits non-zero when a migration is missing
        pytest.fail(f"missing migrations:\n{out.getvalue()}")
        raise AssertionError from exc
