"""The dashboard over Django's test client: sign-in, pages scoped to the user's teams by role, the job
page's live metrics feed, job operations and API keys through the same services as the API."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from tailor.teams.models import APIKey
from tailor.teams.services import api_key_authenticate
from tailor.tuning.models import FineTuningJob

from tests.browser.world import PASSWORD, World, build_world, report_metrics
from tests.tailor.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world() -> World:
    return build_world()


def signed_in(world: World, role: str) -> Client:
    client = Client()
    client.force_login(world.users[role])
    return client


def job_url(team: str, job: FineTuningJob, suffix: str = "") -> str:
    return f"/dashboard/t/{team}/jobs/{job.public_id}/{suffix}"


def test_pages_need_a_signed_in_member(world: World) -> None:
    anonymous = Client()
    for url in ("/dashboard/", "/dashboard/t/alpha/", job_url("alpha", world.running)):
        response = anonymous.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/dashboard/login/?next=")
    assert anonymous.get(job_url("alpha", world.running, "metrics.json")).status_code == 302


def test_sign_in_with_a_password_lands_on_the_team_overview(world: World) -> None:
    client = Client()
    refused = client.post("/dashboard/login/", {"username": "alice@example.com", "password": "wrong"})
    assert refused.status_code == 200 and "did not match" in refused.content.decode()
    response = client.post(
        "/dashboard/login/", {"username": "alice@example.com", "password": PASSWORD}, follow=True
    )
    assert response.redirect_chain[-1][0] == "/dashboard/t/alpha/"
    # A viewer is not staff: the dashboard signs them in all the same.
    viewer = Client()
    assert (
        viewer.post("/dashboard/login/", {"username": "vera@example.com", "password": PASSWORD}).status_code
        == 302
    )
    assert viewer.get("/dashboard/t/alpha/").status_code == 200


def test_overview_shows_the_teams_jobs_quota_adapters_and_endpoints(world: World) -> None:
    page = signed_in(world, "member").get("/dashboard/t/alpha/").content.decode()
    assert world.running.public_id in page and world.queued.public_id in page
    assert world.beta_job.public_id not in page and "beta-secret" not in page
    assert "30 / 120 steps · 25%" in page
    assert re.search(r"Jobs on GPUs</h3>\s*<p class=\"figure\">1 <span class=\"muted\">of 2", page)
    assert "of 40.00" in page  # the GPU-hour budget
    assert world.extra["adapter"].name in page and "vllm-main" in page
    assert "status-live" in page and "status-healthy" in page


def test_another_teams_pages_and_jobs_answer_404(world: World) -> None:
    alice = signed_in(world, "admin")
    assert alice.get("/dashboard/t/beta/").status_code == 404
    assert alice.get("/dashboard/t/no-such-team/").status_code == 404
    for suffix in ("", "metrics.json"):
        assert alice.get(job_url("alpha", world.beta_job, suffix)).status_code == 404
        assert alice.get(job_url("beta", world.beta_job, suffix)).status_code == 404
    assert alice.post(job_url("alpha", world.beta_job, "cancel/")).status_code == 404
    assert FineTuningJob.objects.get(pk=world.beta_job.pk).status == "running"
    listing = alice.get("/dashboard/t/alpha/jobs/").content.decode()
    assert world.running.public_id in listing and world.beta_job.public_id not in listing


def test_job_page_shows_curve_timeline_hyperparameters_and_throughput(world: World) -> None:
    page = signed_in(world, "viewer").get(job_url("alpha", world.running)).content.decode()
    chart = json.loads(
        re.search(r'id="job-chart-data" type="application/json">(.*?)</script>', page).group(1)
    )
    assert len(chart["train"]) == 30 and len(chart["valid"]) == 3
    assert chart["train"][0] == [1.0, pytest.approx(2.6, abs=0.1)] and chart["status"] == "running"
    assert "Fine-tuning job started" in page and "Files validated" in page
    assert "n_epochs" in page  # resolved hyperparameters
    assert "1,880 tokens/s" in page and "2 h" not in page and "2 min" in page  # 90 steps × 1.5 s
    assert 'id="loss-chart"' in page and "/static/web/loss-chart.js" in page


def test_metrics_feed_returns_only_new_points_and_the_jobs_state(world: World) -> None:
    client = signed_in(world, "member")
    url = job_url("alpha", world.running, "metrics.json")
    first = client.get(url).json()
    assert len(first["train"]) == 30 and first["step"] == 30 and first["total_steps"] == 120
    assert first["status"] == "running" and first["finished"] is False
    assert client.get(f"{url}?after={first['cursor']}").json()["train"] == []
    report_metrics(world.running, range(31, 36))
    later = client.get(f"{url}?after={first['cursor']}").json()
    assert [point[0] for point in later["train"]] == [31, 32, 33, 34, 35]
    assert later["step"] == 35 and later["tokens_per_second"] == 1885.0 and later["eta_seconds"] == 127.5


def test_admin_cancels_pauses_and_resumes_through_the_services(world: World) -> None:
    alice = signed_in(world, "admin")
    page = alice.get(job_url("alpha", world.running)).content.decode()
    assert 'id="job-cancel"' in page and 'id="job-pause"' in page
    response = alice.post(job_url("alpha", world.running, "pause/"), follow=True)
    assert FineTuningJob.objects.get(pk=world.running.pk).status == "pausing"
    assert f"Job {world.running.public_id} is pausing." in response.content.decode()
    alice.post(job_url("alpha", world.running, "resume/"))
    assert FineTuningJob.objects.get(pk=world.running.pk).resume_requested
    alice.post(job_url("alpha", world.running, "cancel/"))
    assert FineTuningJob.objects.get(pk=world.running.pk).status == "cancelling"
    # The queued job holds no GPU: cancelled at once. Resuming it is refused with the service's words.
    alice.post(job_url("alpha", world.queued, "cancel/"))
    assert FineTuningJob.objects.get(pk=world.queued.pk).status == "cancelled"
    refused = alice.post(job_url("alpha", world.queued, "resume/"), follow=True).content.decode()
    assert "only a paused job can be resumed" in refused


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_members_and_viewers_change_nothing(world: World, role: str) -> None:
    client = signed_in(world, role)
    page = client.get(job_url("alpha", world.running)).content.decode()
    assert 'id="job-actions"' not in page and "job-cancel" not in page
    for action in ("cancel/", "pause/", "resume/"):
        assert client.post(job_url("alpha", world.running, action)).status_code == 403
    assert FineTuningJob.objects.get(pk=world.running.pk).status == "running"
    assert "API keys" not in client.get("/dashboard/t/alpha/").content.decode()
    assert client.get("/dashboard/t/alpha/keys/").status_code == 403
    assert client.post("/dashboard/t/alpha/keys/", {"name": "sneaky"}).status_code == 403
    assert not APIKey.objects.filter(name="sneaky").exists()


def test_posts_need_the_csrf_token(world: World) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users["admin"])
    assert client.post(job_url("alpha", world.running, "cancel/")).status_code == 403
    assert FineTuningJob.objects.get(pk=world.running.pk).status == "running"


def test_an_admin_creates_a_key_sees_it_once_and_revokes_it(world: World) -> None:
    alice = signed_in(world, "admin")
    created = alice.post("/dashboard/t/alpha/keys/", {"name": "ci", "scopes": ["read"]}).content.decode()
    secrets_shown = set(re.findall(r"tlr-[A-Za-z0-9]{40}", created))
    assert len(secrets_shown) == 1
    secret = secrets_shown.pop()
    key = api_key_authenticate(raw_key=secret)
    assert key.team == world.alpha and key.scopes == ["read"] and key.created_by == world.users["admin"]
    listing = alice.get("/dashboard/t/alpha/keys/").content.decode()
    assert f"{key.prefix}…" in listing and secret not in listing
    alice.post(f"/dashboard/t/alpha/keys/{key.pk}/revoke/")
    key.refresh_from_db()
    assert key.revoked_at is not None
    # Another team's key id is not found here.
    other = APIKey.objects.create(team=world.beta, prefix="tlr-beta0000", key_hash="f" * 64, scopes=["read"])
    assert alice.post(f"/dashboard/t/alpha/keys/{other.pk}/revoke/").status_code == 404
    other.refresh_from_db()
    assert other.revoked_at is None


def test_team_switcher_lists_every_team_of_the_user(world: World) -> None:
    MembershipFactory(user=world.users["admin"], team=world.beta, role="viewer")
    alice = signed_in(world, "admin")
    page = alice.get("/dashboard/t/alpha/").content.decode()
    assert 'id="team-switcher"' in page and ">alpha (admin)<" in page and ">beta (viewer)<" in page
    beta_page = alice.get(job_url("beta", world.beta_job)).content.decode()
    assert "job-cancel" not in beta_page  # only a viewer there
    assert alice.get("/dashboard/").url == "/dashboard/t/beta/"  # the last team looked at


def test_a_user_without_a_team_is_told_so(world: World) -> None:
    client = Client()
    client.force_login(UserFactory(username="nobody@example.com"))
    assert "not a member of any team" in client.get("/dashboard/").content.decode()


def test_dashboard_assets_are_served_without_collectstatic() -> None:
    for asset, start in (("dashboard.css", b"/*"), ("loss-chart.js", b"/*"), ("dashboard.js", b"/*")):
        response = Client().get(f"/static/web/{asset}")
        assert response.status_code == 200, asset
        assert b"".join(response.streaming_content).startswith(start)
