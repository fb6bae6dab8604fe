"""The web admin for jobs, adapters and quotas: staff see their own teams' jobs read-only, only a
superuser changes a job's priority or a team's quotas."""

from __future__ import annotations

import pytest
from django.test import Client
from tailor.teams.models import Team
from tailor.tuning.models import FineTuningJob

from tests.tailor.factories import MembershipFactory, TeamFactory, UserFactory
from tests.tailor.jobs_factories import BaseModelFactory, create_job

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_team_staff_see_their_jobs_read_only_and_cannot_raise_their_quota() -> None:
    ours, theirs = TeamFactory(slug="ours"), TeamFactory(slug="theirs")
    admin = UserFactory(is_staff=True)
    MembershipFactory(user=admin, team=ours, role="admin")
    base = BaseModelFactory()
    mine, other = create_job(ours, base=base), create_job(theirs, base=base)
    client = client_for(admin)

    listing = client.get("/admin/tuning/finetuningjob/").content.decode()
    assert mine.public_id in listing and other.public_id not in listing
    assert client.get(f"/admin/tuning/finetuningjob/{other.pk}/change/").status_code == 404
    page = client.get(f"/admin/tuning/finetuningjob/{mine.pk}/change/")
    assert page.status_code == 200 and 'name="priority"' not in page.content.decode()
    assert "estimated peak GPU memory" in page.content.decode()
    assert f"Created fine-tuning job: {mine.public_id}" in page.content.decode()

    team_page = client.get(f"/admin/teams/team/{ours.pk}/change/").content.decode()
    assert 'name="max_concurrent_jobs"' not in team_page and 'name="gpu_hour_budget"' not in team_page
    client.post(f"/admin/teams/team/{ours.pk}/change/", {"name": "Ours", "max_concurrent_jobs": 50})
    assert Team.objects.get(pk=ours.pk).max_concurrent_jobs == 2


def test_a_superuser_sets_priorities_and_quotas() -> None:
    team = TeamFactory(slug="prio")
    job = create_job(team)
    root = client_for(UserFactory(is_staff=True, is_superuser=True))
    page = root.get(f"/admin/tuning/finetuningjob/{job.pk}/change/").content.decode()
    assert 'name="priority"' in page
    inlines = {
        f"{prefix}-{field}": value
        for prefix in ("checkpoints",)
        for field, value in (
            ("TOTAL_FORMS", 0),
            ("INITIAL_FORMS", 0),
            ("MIN_NUM_FORMS", 0),
            ("MAX_NUM_FORMS", 0),
        )
    }
    response = root.post(f"/admin/tuning/finetuningjob/{job.pk}/change/", {"priority": 7, **inlines})
    assert response.status_code == 302 and FineTuningJob.objects.get(pk=job.pk).priority == 7
    response = root.post(
        f"/admin/teams/team/{team.pk}/change/",
        {
            "slug": "prio",
            "name": "Prio",
            "max_concurrent_jobs": 4,
            "gpu_hour_budget": "12.5",
            "job_priority": 3,
        },
    )
    assert response.status_code == 302
    team.refresh_from_db()
    assert (team.max_concurrent_jobs, str(team.gpu_hour_budget), team.job_priority) == (4, "12.50", 3)
    for path in (
        "tuning/basemodel/",
        "tuning/adapter/",
        "webhooks/webhookendpoint/",
        "webhooks/webhookdelivery/",
    ):
        assert root.get(f"/admin/{path}").status_code == 200, path
