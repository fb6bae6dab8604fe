"""The dashboard and the admin in a real browser (headless Chromium) against a live server: a team admin
signs in, creates an API key and sees it once, sees only the team's jobs, watches a running job's loss
chart gain points while metrics arrive, cancels it, and is refused another team's job; a viewer sees no
buttons and is refused when posting anyway. Screenshots go to var/artifacts/screenshots/."""

from __future__ import annotations

import re

import pytest
from tailor.teams.services import api_key_authenticate
from tailor.tuning.models import FineTuningJob

from tests.browser.pages import screenshot, sign_in
from tests.browser.world import build_world, report_metrics

try:
    from playwright.sync_api import expect
except ImportError:  # the `page` fixture then skips every test, with a warning saying why
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def chart_points(page) -> tuple[int, int]:
    chart = page.locator("#loss-chart")
    return int(chart.get_attribute("data-train-points")), int(chart.get_attribute("data-valid-points"))


def test_team_admin_manages_keys_and_watches_and_cancels_a_running_job(page) -> None:
    world = build_world()
    running, beta_job = world.running, world.beta_job

    sign_in(page, "alice@example.com")
    expect(page).to_have_url(re.compile(r"/dashboard/t/alpha/$"))
    active = page.locator("#active-jobs")
    expect(active).to_contain_text(running.public_id)
    expect(active).to_contain_text(world.queued.public_id)
    expect(active).to_contain_text("30 / 120 steps · 25%")
    expect(page.locator("body")).not_to_contain_text(beta_job.public_id)
    expect(page.locator("#quota-gpu-hours")).to_contain_text("of 40.00")
    expect(page.locator("#endpoints")).to_contain_text("healthy")
    screenshot(page, "dashboard-overview")

    # A new API key is shown once, then only by its prefix.
    page.click("nav.sections >> text=API keys")
    page.fill("#key-name", "notebook")
    page.click("#create-key")
    secret = page.locator("#issued-secret").inner_text().strip()
    assert re.fullmatch(r"tlr-[A-Za-z0-9]{40}", secret)
    key = api_key_authenticate(raw_key=secret)
    assert key.team == world.alpha and key.name == "notebook"
    screenshot(page, "dashboard-api-key-created")
    page.goto("/dashboard/t/alpha/keys/")
    expect(page.locator("#keys")).to_contain_text(f"{key.prefix}…")
    assert secret not in page.content()

    # The job list holds the team's jobs only.
    page.click("nav.sections >> text=Jobs")
    expect(page.locator("#jobs")).to_contain_text(running.public_id)
    expect(page.locator("#jobs")).not_to_contain_text(beta_job.public_id)

    # The running job's chart grows while the worker's metrics arrive.
    page.click(f"#jobs >> text={running.public_id}")
    expect(page.locator("#job-status")).to_have_text("running")
    expect(page.locator("#loss-chart")).to_have_attribute("data-train-points", "30")
    assert chart_points(page) == (30, 3)
    expect(page.locator("#hyperparameters")).to_contain_text("n_epochs")
    expect(page.locator("#timeline")).to_contain_text("Fine-tuning job started")
    screenshot(page, "dashboard-job-running")
    report_metrics(running, range(31, 46))
    expect(page.locator("#loss-chart")).to_have_attribute("data-train-points", "45", timeout=10_000)
    report_metrics(running, range(46, 61))
    expect(page.locator("#loss-chart")).to_have_attribute("data-train-points", "60", timeout=10_000)
    assert chart_points(page) == (60, 6)
    expect(page.locator("#job-progress")).to_contain_text("60 / 120 steps · 50%")
    expect(page.locator("#job-throughput")).to_contain_text("1,910 tokens/s")
    expect(page.locator("#job-eta")).to_have_text("1 min")
    screenshot(page, "dashboard-job-live-chart")

    # Cancel goes through job_cancel: the runner is asked to stop, the job is cancelling.
    page.click("#job-cancel")
    expect(page.locator(".messages")).to_contain_text(f"Job {running.public_id} is cancelling.")
    expect(page.locator("#job-status")).to_have_text("cancelling")
    expect(page.locator("#job-cancel")).to_be_hidden()
    assert FineTuningJob.objects.get(pk=running.pk).status == "cancelling"
    expect(page.locator("#timeline")).to_contain_text("Cancellation requested")
    screenshot(page, "dashboard-job-cancelling")

    # Another team's job, by URL under either team, is not found.
    for url in (
        f"/dashboard/t/alpha/jobs/{beta_job.public_id}/",
        f"/dashboard/t/beta/jobs/{beta_job.public_id}/",
    ):
        assert page.goto(url).status == 404
    assert page.goto("/dashboard/t/beta/").status == 404
    assert FineTuningJob.objects.get(pk=beta_job.pk).status == "running"


def test_a_viewer_sees_no_buttons_and_cannot_post_anyway(page) -> None:
    world = build_world()
    sign_in(page, "vera@example.com")
    expect(page).to_have_url(re.compile(r"/dashboard/t/alpha/$"))
    expect(page.locator("nav.sections")).not_to_contain_text("API keys")

    page.goto(f"/dashboard/t/alpha/jobs/{world.running.public_id}/")
    expect(page.locator("#loss-chart")).to_have_attribute("data-train-points", "30")
    assert (
        page.locator("#job-actions").count() == 0 and page.locator("button", has_text="Cancel").count() == 0
    )
    screenshot(page, "dashboard-job-viewer")

    # A hand-made POST with a valid CSRF token is refused by role; the job keeps running.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    for action in ("cancel", "pause"):
        response = page.request.post(
            f"/dashboard/t/alpha/jobs/{world.running.public_id}/{action}/",
            headers={"X-CSRFToken": token, "Referer": page.url},
        )
        assert response.status == 403
    assert page.goto("/dashboard/t/alpha/keys/").status == 403
    assert FineTuningJob.objects.get(pk=world.running.pk).status == "running"


def test_team_admin_in_the_django_admin(page) -> None:
    world = build_world()
    sign_in(page, "alice@example.com", at="/admin/login/")
    page.goto("/admin/tuning/finetuningjob/")
    expect(page.locator("#result_list")).to_contain_text(world.running.public_id)
    expect(page.locator("#result_list")).not_to_contain_text(world.beta_job.public_id)
    screenshot(page, "admin-jobs")

    page.click(f"#result_list >> text={world.running.public_id}")
    page.click("button:has-text('Pause job')")
    expect(page.locator(".messagelist")).to_contain_text(f"Job {world.running.public_id} is pausing.")
    assert FineTuningJob.objects.get(pk=world.running.pk).status == "pausing"
    expect(page.locator("button:has-text('Resume job')")).to_be_visible()
    screenshot(page, "admin-job-paused")

    # The admin's own key form shows the new key once too.
    page.goto("/admin/teams/apikey/add/")
    page.select_option("select[name=team]", label="alpha")
    page.fill("input[name=name]", "from-admin")
    page.click("input[name=_save]")
    secret = page.locator("#issued-api-key").inner_text().strip()
    assert api_key_authenticate(raw_key=secret).name == "from-admin"
    screenshot(page, "admin-api-key-created")
    assert page.goto(f"/admin/tuning/finetuningjob/{world.beta_job.pk}/change/").status == 404
