"""Fixtures shared by the control-plane tests: API clients with bearer keys, an isolated object store
and control queue, and real platform processes (a Celery control worker) for integration tests.

Factories live in `tests.tailor.factories`, process helpers in `tests.tailor.processes`. Integration
tests that hand work to another process use `@pytest.mark.django_db(transaction=True)` so that the
other process sees committed rows in the pytest-django test database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.test import APIClient
from tailor.teams.models import APIKey, Team
from tailor.teams.services import IssuedKey

from tests.tailor.factories import TeamFactory, bearer_client, issue_key
from tests.tailor.processes import PlatformProcess, delete_queue, platform_env, start_control_worker

# API clients ---------------------------------------------------------------------------------------


@pytest.fixture
def team(db: None) -> Team:
    return TeamFactory()


@pytest.fixture
def other_team(db: None) -> Team:
    return TeamFactory()


@pytest.fixture
def issued_key(team: Team) -> IssuedKey:
    return issue_key(team)


@pytest.fixture
def api_client(issued_key: IssuedKey) -> APIClient:
    """Authenticated as `team` with a read/write key."""
    return bearer_client(issued_key.secret)


@pytest.fixture
def other_client(other_team: Team) -> APIClient:
    """Authenticated as `other_team`."""
    return bearer_client(issue_key(other_team).secret)


@pytest.fixture
def read_only_client(team: Team) -> APIClient:
    return bearer_client(issue_key(team, scopes=[APIKey.Scope.READ]).secret)


# Isolation: database connections, object store, control queue ----------------------------------------


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """Tests close database connections after every request: a live server thread parked on a
    keep-alive socket must not hold a connection that blocks dropping the test database."""
    for db in settings.DATABASES.values():
        db["CONN_MAX_AGE"] = 0


@pytest.fixture(scope="session")
def storage_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh local object store for the session, shared with the processes the tests start."""
    return tmp_path_factory.mktemp("objects").as_uri()


@pytest.fixture(scope="session", autouse=True)
def _isolated_storage(storage_url: str) -> Iterator[None]:
    # A fast password hasher too: the default one is deliberately slow, and tests create many users.
    with override_settings(
        TAILOR_STORAGE_URL=storage_url, PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]
    ):
        yield


@pytest.fixture(scope="session", autouse=True)
def control_queue_name() -> Iterator[str]:
    """A control queue of this test session's own, so suites sharing one Redis never take each other's
    messages (the router reads TAILOR_CONTROL_QUEUE whenever a task is sent)."""
    name = f"control-test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{uuid.uuid4().hex[:8]}"
    previous = os.environ.get("TAILOR_CONTROL_QUEUE")
    os.environ["TAILOR_CONTROL_QUEUE"] = name
    yield name
    delete_queue(name)
    if previous is None:
        os.environ.pop("TAILOR_CONTROL_QUEUE", None)
    else:
        os.environ["TAILOR_CONTROL_QUEUE"] = previous


# Real platform processes ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def control_worker(
    django_db_setup: None, storage_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PlatformProcess]:
    """A real `tailor worker control` process consuming this session's queue against the test database."""
    home = tmp_path_factory.mktemp("worker-home")
    worker = start_control_worker(platform_env(home, storage_url), home)
    yield worker
    worker.stop()
