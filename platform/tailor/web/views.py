"""The dashboard's pages: sign-in, a team overview, the team's jobs, a job with its live loss curve, and
the team's API keys.

Every page lives under `/dashboard/t/<team slug>/` and is built for the signed-in user's role in that team
(`tailor.web.access`): a team the user is not in, and another team's job, answer 404. Owners and admins
get the buttons (cancel / pause / resume, create / revoke key); each POSTs with the CSRF token to the
same service the API calls. Members and viewers get no buttons, and their POSTs answer 403.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.views.decorators.http import require_GET, require_POST

from tailor.core.errors import ApplicationError, NotFound
from tailor.teams.models import APIKey
from tailor.teams.selectors import api_key_list
from tailor.teams.services import api_key_create, api_key_revoke
from tailor.tuning.models import FineTuningJob
from tailor.tuning.selectors import job_checkpoints, job_get
from tailor.tuning.services import job_cancel, job_pause, job_resume
from tailor.web.access import TeamAccess, team_access, teams_of
from tailor.web.selectors import (
    job_adapter,
    job_messages,
    job_metrics,
    job_timeline,
    latest_throughput,
    team_jobs,
    team_overview,
)

LOGIN_URL = reverse_lazy("web:login")
Status = FineTuningJob.Status
# Which buttons a job shows in which status; the page's script toggles them as the status changes.
JOB_ACTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cancel": ("Cancel", tuple(set(Status.values) - {*FineTuningJob.TERMINAL, Status.CANCELLING})),
    "pause": ("Pause", (Status.QUEUED, Status.RUNNING)),
    "resume": ("Resume", (Status.PAUSED, Status.PAUSING)),
}
JOB_SERVICES: dict[str, Callable[..., FineTuningJob]] = {
    "cancel": job_cancel,
    "pause": job_pause,
    "resume": job_resume,
}
JOBS_PER_PAGE = 25


class DashboardLoginView(LoginView):
    template_name = "web/login.html"
    redirect_authenticated_user = True

    def get_default_redirect_url(self) -> str:
        return reverse("web:home")


def team_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Signed in, and a member of the team in the URL: the view gets its TeamAccess, else 404."""

    @login_required(login_url=LOGIN_URL)
    @wraps(view)
    def wrapper(request: HttpRequest, slug: str, *args: Any, **kwargs: Any) -> HttpResponse:
        access = team_access(user=request.user, slug=slug)
        request.session["tailor_team"] = slug
        return view(request, access, *args, **kwargs)

    return wrapper


def _require_manager(access: TeamAccess) -> None:
    if not access.can_manage:
        raise PermissionDenied(f"Only the owners and admins of {access.team.slug} can do this.")


def _job(access: TeamAccess, job_id: str) -> FineTuningJob:
    try:
        return job_get(team=access.team, job_id=job_id)
    except NotFound as exc:
        raise Http404(exc.message) from None


def _page(
    request: HttpRequest, access: TeamAccess, template: str, section: str, **context: Any
) -> HttpResponse:
    return render(
        request,
        template,
        {
            "access": access,
            "team": access.team,
            "teams": teams_of(user=request.user),
            "section": section,
            **context,
        },
    )


@login_required(login_url=LOGIN_URL)
def home(request: HttpRequest) -> HttpResponse:
    """The last team the user looked at, or their first; a note when they belong to none."""
    teams = teams_of(user=request.user)
    if not teams:
        return render(request, "web/no_team.html", {"teams": []})
    slugs = [entry.team.slug for entry in teams]
    remembered = request.session.get("tailor_team")
    return redirect("web:overview", slug=remembered if remembered in slugs else slugs[0])


@team_page
def overview(request: HttpRequest, access: TeamAccess) -> HttpResponse:
    return _page(request, access, "web/overview.html", "overview", overview=team_overview(team=access.team))


@team_page
def job_list(request: HttpRequest, access: TeamAccess) -> HttpResponse:
    status = request.GET.get("status") or None
    if status is not None and status not in Status.values:
        status = None
    page = Paginator(team_jobs(team=access.team, status=status), JOBS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    return _page(
        request, access, "web/job_list.html", "jobs", page=page, status=status, statuses=Status.values
    )


@team_page
def job_detail(request: HttpRequest, access: TeamAccess, job_id: str) -> HttpResponse:
    job = _job(access, job_id)
    metrics = job_metrics(job=job)
    adapter, deployments = job_adapter(job=job)
    actions = [
        {"name": name, "label": label, "statuses": " ".join(statuses), "shown": job.status in statuses}
        for name, (label, statuses) in JOB_ACTIONS.items()
    ]
    chart = {
        "metricsUrl": reverse("web:job_metrics", args=[access.team.slug, job.public_id]),
        "status": job.status,
        "terminal": list(FineTuningJob.TERMINAL),
        "train": metrics.train,
        "valid": metrics.valid,
        "cursor": metrics.cursor,
    }
    return _page(
        request,
        access,
        "web/job_detail.html",
        "jobs",
        job=job,
        chart=chart,
        throughput=latest_throughput(job=job),
        timeline=job_timeline(job=job),
        events=job_messages(job=job),
        checkpoints=job_checkpoints(job=job, limit=20).items,
        adapter=adapter,
        deployments=deployments,
        actions=actions if access.can_manage else [],
        hyperparameters=[
            (name, value if isinstance(value, str) else json.dumps(value))
            for name, value in sorted(
                (job.resolved_hyperparameters or job.requested_hyperparameters or {}).items()
            )
        ],
    )


@require_GET
@team_page
def job_metrics_json(request: HttpRequest, access: TeamAccess, job_id: str) -> JsonResponse:
    """What the job page polls every two seconds: the points stored after `after`, and the job's state."""
    job = _job(access, job_id)
    try:
        after = max(0, int(request.GET.get("after", "0")))
    except ValueError:
        after = 0
    metrics = job_metrics(job=job, after=after)
    latest = metrics.latest or latest_throughput(job=job)
    return JsonResponse(
        {
            "status": job.status,
            "step": job.step,
            "total_steps": job.total_steps,
            "trained_tokens": job.trained_tokens,
            "estimated_finish": job.estimated_finish.isoformat() if job.estimated_finish else None,
            "tokens_per_second": latest.get("tokens_per_second"),
            "eta_seconds": latest.get("eta_seconds") if job.status in FineTuningJob.ON_GPU else None,
            "train": metrics.train,
            "valid": metrics.valid,
            "cursor": metrics.cursor,
            "finished": job.status in FineTuningJob.TERMINAL,
        },
        headers={"Cache-Control": "no-store"},
    )


@require_POST
@team_page
def job_action(request: HttpRequest, access: TeamAccess, job_id: str, action: str) -> HttpResponse:
    _require_manager(access)
    job = _job(access, job_id)
    service = JOB_SERVICES.get(action)
    if service is None:
        raise Http404(f"No job action {action!r}.")
    try:
        job = service(job=job)
        messages.success(request, f"Job {job.public_id} is {job.status}.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("web:job_detail", slug=access.team.slug, job_id=job.public_id)


@team_page
def api_keys(request: HttpRequest, access: TeamAccess) -> HttpResponse:
    """The team's keys by prefix; creating one shows its secret in this one response only."""
    _require_manager(access)
    issued = None
    if request.method == "POST":
        scopes = [scope for scope in request.POST.getlist("scopes") if scope in APIKey.Scope.values]
        try:
            issued = api_key_create(
                team=access.team,
                name=request.POST.get("name", "").strip()[:100],
                created_by=request.user,
                scopes=scopes or None,
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
    return _page(
        request,
        access,
        "web/api_keys.html",
        "keys",
        keys=api_key_list(team=access.team).select_related("created_by"),
        issued=issued,
        scopes=APIKey.Scope.choices,
    )


@require_POST
@team_page
def api_key_revoke_view(request: HttpRequest, access: TeamAccess, key_id: int) -> HttpResponse:
    _require_manager(access)
    api_key = api_key_list(team=access.team).filter(pk=key_id).first()
    if api_key is None:
        raise Http404(f"No API key {key_id}.")
    api_key_revoke(api_key=api_key)
    messages.success(request, f"API key {api_key.prefix}… revoked; it answers 401 from now on.")
    return redirect("web:api_keys", slug=access.team.slug)
