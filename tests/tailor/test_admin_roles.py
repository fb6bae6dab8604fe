"""The web admin by team role: members and viewers read their team's files and jobs and change nothing;
owners and admins cancel / pause / resume jobs and revoke keys through the API's services, from the job's
page or as list actions; nobody reaches another team's rows."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from tailor.teams.models import Membership
from tailor.tuning.models import FineTuningJob

from tests.browser.world import PASSWORD, World, build_world
from tests.tailor.factories import FileFactory, MembershipFactory, issue_key

pytestmark = pytest.mark.django_db

JOBS = "/admin/tuning/finetuningjob/"


@pytest.fixture
def world() -> World:
    return build_world()


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def status_of(job: FineTuningJob) -> str:
    return FineTuningJob.objects.get(pk=job.pk).status


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_members_and_viewers_read_their_teams_jobs_and_files_only(world: World, role: str) -> None:
    user = world.users[role]
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    client = signed_in(user)
    ours, theirs = FileFactory(team=world.alpha, filename="ours.jsonl"), FileFactory(team=world.beta)

    index = client.get("/admin/").content.decode()
    assert "/admin/tuning/finetuningjob/" in index and "/admin/files/file/" in index
    assert "Teams and API keys" not in index  # keys and members are the managers'
    listing = client.get(JOBS).content.decode()
    assert world.running.public_id in listing and world.beta_job.public_id not in listing
    assert 'name="action"' not in listing  # no actions to run
    page = client.get(f"{JOBS}{world.running.pk}/change/").content.decode()
    assert world.running.public_id in page and 'name="_save"' not in page and "Cancel job" not in page
    assert "ours.jsonl" in client.get("/admin/files/file/").content.decode()
    assert client.get(f"/admin/files/file/{theirs.pk}/change/").status_code == 404
    assert client.get(f"{JOBS}{world.beta_job.pk}/change/").status_code == 404

    # Every way of changing something is refused.
    assert client.post(f"{JOBS}{world.running.pk}/do/cancel/").status_code == 403
    client.post(JOBS, {"action": "cancel_jobs", "_selected_action": [world.running.pk]})
    assert status_of(world.running) == "running"
    assert client.post(f"/admin/files/file/{ours.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get("/admin/teams/apikey/").status_code == 403


def test_an_admin_cancels_pauses_and_resumes_from_the_jobs_page(world: World) -> None:
    alice = signed_in(world.users["admin"])
    page = alice.get(f"{JOBS}{world.running.pk}/change/").content.decode()
    assert "Cancel job" in page and "Pause job" in page and "Resume job" not in page
    assert 'name="_save"' not in page  # nothing on the page is the team's to edit

    response = alice.post(f"{JOBS}{world.running.pk}/do/pause/", follow=True)
    assert status_of(world.running) == "pausing"
    assert f"Job {world.running.public_id} is pausing." in response.content.decode()
    assert "Resume job" in response.content.decode() and "Pause job" not in response.content.decode()
    alice.post(f"{JOBS}{world.running.pk}/do/resume/")
    assert FineTuningJob.objects.get(pk=world.running.pk).resume_requested
    alice.post(f"{JOBS}{world.running.pk}/do/cancel/")
    assert status_of(world.running) == "cancelling"

    alice.post(f"{JOBS}{world.queued.pk}/do/cancel/")
    assert status_of(world.queued) == "cancelled"
    refused = alice.post(f"{JOBS}{world.queued.pk}/do/resume/", follow=True).content.decode()
    assert "only a paused job can be resumed" in refused
    # Only POST runs an operation, and only on the team's own jobs.
    assert alice.get(f"{JOBS}{world.running.pk}/do/cancel/").status_code == 405
    assert alice.post(f"{JOBS}{world.beta_job.pk}/do/cancel/").status_code == 404
    assert alice.post(f"{JOBS}{world.running.pk}/do/explode/").status_code == 404
    assert status_of(world.beta_job) == "running"


def test_list_actions_skip_rows_of_teams_the_user_only_reads(world: World) -> None:
    alice = world.users["admin"]
    MembershipFactory(user=alice, team=world.beta, role="viewer")
    client = signed_in(alice)
    listing = client.get(JOBS).content.decode()
    assert world.beta_job.public_id in listing  # readable now

    response = client.post(
        JOBS,
        {"action": "pause_jobs", "_selected_action": [world.running.pk, world.queued.pk, world.beta_job.pk]},
        follow=True,
    )
    text = response.content.decode()
    assert "1 selected row belongs to teams you can only view." in text and "Paused 2 jobs." in text
    assert (status_of(world.running), status_of(world.queued), status_of(world.beta_job)) == (
        "pausing",
        "paused",
        "running",
    )
    client.post(JOBS, {"action": "resume_jobs", "_selected_action": [world.queued.pk]})
    assert status_of(world.queued) == "queued"
    response = client.post(
        JOBS, {"action": "cancel_jobs", "_selected_action": [world.queued.pk]}, follow=True
    )
    assert status_of(world.queued) == "cancelled" and "Cancelled 1 job." in response.content.decode()
    # The service's refusal is reported, not swallowed.
    response = client.post(JOBS, {"action": "pause_jobs", "_selected_action": [world.queued.pk]}, follow=True)
    assert "only a queued or running job can be paused" in response.content.decode()


def test_revoking_a_key_from_its_page(world: World) -> None:
    key = issue_key(world.alpha).api_key
    alice = signed_in(world.users["admin"])
    page = alice.get(f"/admin/teams/apikey/{key.pk}/change/").content.decode()
    assert ">Revoke<" in page
    response = alice.post(f"/admin/teams/apikey/{key.pk}/do/revoke/", follow=True)
    key.refresh_from_db()
    assert key.revoked_at is not None and "revoked" in response.content.decode()
    assert ">Revoke<" not in alice.get(f"/admin/teams/apikey/{key.pk}/change/").content.decode()
    theirs = issue_key(world.beta).api_key
    assert alice.post(f"/admin/teams/apikey/{theirs.pk}/do/revoke/").status_code == 404


def test_new_members_can_sign_in_and_existing_accounts_keep_their_password(world: World) -> None:
    alice = signed_in(world.users["admin"])
    response = alice.post(
        "/admin/teams/membership/add/",
        {
            "team": world.alpha.pk,
            "email": "nina@example.com",
            "password": "a long fresh passphrase",
            "role": "viewer",
        },
    )
    assert response.status_code == 302
    nina = get_user_model().objects.get(username="nina@example.com")
    assert nina.is_staff and nina.check_password("a long fresh passphrase")
    assert Client().login(username="nina@example.com", password="a long fresh passphrase")

    # carol exists (beta's owner): a team's admin must not be able to set her password.
    refused = alice.post(
        "/admin/teams/membership/add/",
        {
            "team": world.alpha.pk,
            "email": "carol@example.com",
            "password": "taken over now!",
            "role": "member",
        },
    )
    assert "its password stays its own" in refused.content.decode()
    carol = get_user_model().objects.get(username="carol@example.com")
    assert (
        carol.check_password(PASSWORD)
        and not Membership.objects.filter(user=carol, team=world.alpha).exists()
    )
    weak = alice.post(
        "/admin/teams/membership/add/",
        {"team": world.alpha.pk, "email": "weak@example.com", "password": "123", "role": "member"},
    )
    assert "too short" in weak.content.decode()


def test_only_owners_remove_an_owner(world: World) -> None:
    ownership = Membership.objects.get(team=world.alpha, role="owner")
    alice = signed_in(world.users["admin"])
    assert alice.post(f"/admin/teams/membership/{ownership.pk}/delete/", {"post": "yes"}).status_code == 403
    member = Membership.objects.get(team=world.alpha, role="member")
    assert alice.post(f"/admin/teams/membership/{member.pk}/delete/", {"post": "yes"}).status_code == 302
    olga = signed_in(world.users["owner"])
    assert olga.post(f"/admin/teams/membership/{ownership.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Membership.objects.filter(pk__in=[ownership.pk, member.pk]).exists()
