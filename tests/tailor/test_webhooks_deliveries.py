"""Job events reach a team's webhook URLs: signed so that the openai SDK's `client.webhooks.unwrap`
verifies them, retried with backoff under the same `webhook-id`, given up after the last retry, and
logged try by try."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from openai import OpenAI
from tailor.tuning.scheduler import schedule_jobs
from tailor.tuning.services import job_cancel, job_report_finished, job_report_started
from tailor.webhooks.delivery import MAX_DELIVERY_ATTEMPTS
from tailor.webhooks.models import WebhookDelivery
from tailor.webhooks.services import deliveries_due, delivery_attempt, endpoint_create

from tests.tailor.jobs_factories import create_job, store_adapter
from tests.tailor.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _allow_loopback(settings) -> None:
    settings.TAILOR_WEBHOOK_ALLOW_PRIVATE = True


def succeed(team) -> str:
    job = create_job(team)
    schedule_jobs()
    job_report_started(job_id=job.public_id, attempt=1, worker="gpu")
    job.refresh_from_db()
    job_report_finished(job_id=job.public_id, attempt=1, outcome="succeeded", result=store_adapter(job))
    return job.public_id


def test_a_succeeded_job_is_delivered_and_verifies_with_the_sdk(team, api_client) -> None:
    with webhook_receiver() as receiver:
        endpoint = endpoint_create(team=team, url=receiver.url)
        job_id = succeed(team)
        [delivery] = WebhookDelivery.objects.filter(endpoint=endpoint)
        delivered = delivery_attempt(delivery_id=delivery.pk)
    assert delivered.status == "succeeded" and delivered.attempts == 1 and delivered.last_status_code == 200
    [request] = receiver.requests
    assert request.path == "/hooks/tailor" and request.headers["content-type"] == "application/json"
    event = OpenAI(api_key="unused", webhook_secret=endpoint.secret).webhooks.unwrap(
        request.body, request.headers
    )
    assert (event.type, event.data.id, event.object) == ("fine_tuning.job.succeeded", job_id, "event")
    assert request.headers["webhook-id"] == delivery.msg_id

    log = api_client.get(f"/api/v1/webhooks/{endpoint.public_id}/deliveries").json()
    [shown] = log["data"]
    assert (shown["id"], shown["event_type"], shown["status"], shown["attempts"]) == (
        delivery.msg_id,
        "fine_tuning.job.succeeded",
        "succeeded",
        1,
    )
    assert shown["log"][0]["status_code"] == 200 and shown["payload"]["data"] == {"id": job_id}


def test_failed_tries_are_retried_with_backoff_under_the_same_id(team) -> None:
    with webhook_receiver() as receiver:
        receiver.answers = [500, 503]
        endpoint = endpoint_create(team=team, url=receiver.url)
        job = job_cancel(job=create_job(team))
        [delivery] = WebhookDelivery.objects.filter(endpoint=endpoint)
        assert delivery.event_type == "fine_tuning.job.cancelled"

        first = delivery_attempt(delivery_id=delivery.pk)
        assert (first.status, first.attempts, first.last_status_code) == ("pending", 1, 500)
        wait = (first.next_attempt_at - timezone.now()).total_seconds()
        assert 3.5 < wait < 6.5  # 5 s ± 20 %
        assert delivery_attempt(delivery_id=delivery.pk) is None  # not due yet
        assert delivery.pk not in deliveries_due()

        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        assert deliveries_due() == [delivery.pk]
        second = delivery_attempt(delivery_id=delivery.pk)
        wait = (second.next_attempt_at - timezone.now()).total_seconds()
        assert second.attempts == 2 and 23 < wait < 37  # 30 s ± 20 %

        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        third = delivery_attempt(delivery_id=delivery.pk)
    assert (third.status, third.attempts, third.next_attempt_at) == ("succeeded", 3, None)
    assert [entry["status_code"] for entry in third.log] == [500, 503, 200]
    assert "HTTP 500" in third.log[0]["error"]
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    for request in receiver.requests:
        event = OpenAI(api_key="unused", webhook_secret=endpoint.secret).webhooks.unwrap(
            request.body, request.headers
        )
        assert event.data.id == job.public_id


def test_a_delivery_is_given_up_after_the_last_retry(team) -> None:
    with webhook_receiver() as receiver:
        receiver.answers = [500] * MAX_DELIVERY_ATTEMPTS
        endpoint = endpoint_create(team=team, url=receiver.url)
        job_cancel(job=create_job(team))
        delivery = WebhookDelivery.objects.get(endpoint=endpoint)
        for _ in range(MAX_DELIVERY_ATTEMPTS):
            WebhookDelivery.objects.filter(pk=delivery.pk).update(
                next_attempt_at=timezone.now() - timedelta(seconds=1)
            )
            delivery = delivery_attempt(delivery_id=delivery.pk)
    assert (delivery.status, delivery.attempts) == ("failed", MAX_DELIVERY_ATTEMPTS)
    assert len(receiver.requests) == MAX_DELIVERY_ATTEMPTS and delivery.pk not in deliveries_due()


def test_a_refused_destination_is_not_retried(team, settings) -> None:
    endpoint = endpoint_create(team=team, url="http://127.0.0.1:9/hook")
    settings.TAILOR_WEBHOOK_ALLOW_PRIVATE = False  # the operator changed their mind
    job_cancel(job=create_job(team))
    delivery = delivery_attempt(delivery_id=WebhookDelivery.objects.get(endpoint=endpoint).pk)
    assert delivery.status == "failed" and delivery.attempts == 1 and "loopback" in delivery.last_error


def test_endpoints_get_only_the_events_they_subscribed_to(team, other_team) -> None:
    failed_only = endpoint_create(
        team=team, url="http://127.0.0.1:9/a", event_types=["fine_tuning.job.failed"]
    )
    everything = endpoint_create(team=team, url="http://127.0.0.1:9/b")
    disabled = endpoint_create(team=team, url="http://127.0.0.1:9/c")
    disabled.enabled = False
    disabled.save()
    elsewhere = endpoint_create(team=other_team, url="http://127.0.0.1:9/d")
    succeed(team)
    assert list(WebhookDelivery.objects.values_list("endpoint_id", flat=True)) == [everything.pk]
    assert not WebhookDelivery.objects.filter(endpoint__in=[failed_only, disabled, elsewhere]).exists()
