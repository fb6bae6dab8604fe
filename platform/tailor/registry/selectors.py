"""Reads of the adapter registry, always scoped to one team: another team's adapters, aliases, deployments
and private endpoints answer exactly like missing ones. `route_for_model` is the gateway's routing table:
the one place that decides which endpoint answers a team's request for a model, so tenants stay apart
even though vLLM and Ollama have no per-adapter access control."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet

from tailor.core.errors import NotFound
from tailor.core.pagination import CursorPage, cursor_page
from tailor.registry.models import AdapterAlias, AutoDeployPolicy, Deployment, InferenceEndpoint
from tailor.teams.models import Team
from tailor.tuning.models import Adapter, BaseModel

ALIAS_SEPARATOR = "@"


def adapter_list(
    *,
    team: Team,
    family: str | None = None,
    include_deleted: bool = False,
    after: str | None = None,
    limit: int = 20,
) -> CursorPage[Adapter]:
    """The team's adapter versions, newest first."""
    rows = Adapter.objects.filter(team=team).select_related("job", "base_model")
    if family:
        rows = rows.filter(family=family)
    if not include_deleted:
        rows = rows.filter(deleted_at__isnull=True)
    cursor = Adapter.objects.filter(team=team, name=after).first() if after else None
    if after and cursor is None:
        raise NotFound(f"No adapter {after!r} to page after", param="after")
    return cursor_page(rows, after=cursor, limit=limit, order="desc")


def adapter_get(*, team: Team, name: str, include_deleted: bool = False) -> Adapter:
    """One adapter version of the team by its model name, or an alias (`<family>@<alias>`)."""
    if ALIAS_SEPARATOR in name:
        return alias_get(team=team, model_id=name).adapter
    rows = Adapter.objects.filter(team=team, name=name).select_related("job", "base_model", "team")
    if not include_deleted:
        rows = rows.filter(deleted_at__isnull=True)
    adapter = rows.first()
    if adapter is None:
        raise NotFound(f"No adapter {name!r}", param="adapter")
    return adapter


def alias_list(*, team: Team, family: str | None = None) -> QuerySet[AdapterAlias]:
    rows = AdapterAlias.objects.filter(team=team).select_related("adapter")
    return rows.filter(family=family) if family else rows


def alias_get(*, team: Team, model_id: str) -> AdapterAlias:
    """An alias by its model id `<family>@<name>`."""
    family, _, name = model_id.rpartition(ALIAS_SEPARATOR)
    alias = (
        AdapterAlias.objects.filter(team=team, family=family, name=name)
        .select_related("adapter", "adapter__base_model", "adapter__team", "adapter__job")
        .first()
    )
    if alias is None:
        raise NotFound(f"No alias {model_id!r}", param="model")
    return alias


def endpoints_for_team(*, team: Team) -> QuerySet[InferenceEndpoint]:
    """The team's own endpoints and the shared ones."""
    return InferenceEndpoint.objects.filter(Q(team=team) | Q(team__isnull=True))


def endpoint_get(*, team: Team, endpoint_id: str) -> InferenceEndpoint:
    """An endpoint the team may use, by public id or name (its own name first)."""
    rows = endpoints_for_team(team=team)
    endpoint = rows.filter(public_id=endpoint_id).first()
    if endpoint is None:
        endpoint = rows.filter(name=endpoint_id).order_by("team_id").first()  # nulls last: own first
    if endpoint is None:
        raise NotFound(f"No endpoint {endpoint_id!r}", param="endpoint")
    return endpoint


def deployment_list(
    *,
    team: Team,
    adapter: Adapter | None = None,
    endpoint: InferenceEndpoint | None = None,
    status: str | None = None,
) -> QuerySet[Deployment]:
    rows = Deployment.objects.filter(team=team).select_related("adapter", "endpoint")
    if adapter is not None:
        rows = rows.filter(adapter=adapter)
    if endpoint is not None:
        rows = rows.filter(endpoint=endpoint)
    if status:
        rows = rows.filter(status=status)
    return rows


def deployment_get(*, team: Team, deployment_id: str) -> Deployment:
    deployment = (
        Deployment.objects.filter(team=team, public_id=deployment_id)
        .select_related("adapter", "endpoint")
        .first()
    )
    if deployment is None:
        raise NotFound(f"No deployment {deployment_id!r}", param="deployment")
    return deployment


def policy_list(*, team: Team) -> QuerySet[AutoDeployPolicy]:
    return AutoDeployPolicy.objects.filter(team=team).select_related("endpoint", "base_model")


def policy_get(*, team: Team, policy_id: str) -> AutoDeployPolicy:
    policy = policy_list(team=team).filter(public_id=policy_id).first()
    if policy is None:
        raise NotFound(f"No auto-deploy policy {policy_id!r}", param="policy")
    return policy


# The gateway's routing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where a team's request for `model` goes: the endpoint's base URL and credential, and the name the
    endpoint knows the model by (the `model` field is rewritten to it, and back in the answer)."""

    model: str
    served_name: str
    base_url: str
    credential: str
    endpoint_name: str
    kind: str
    adapter: Adapter | None = None


class ModelNotServed(NotFound):
    """The model exists for the team but is live on no endpoint (404 like OpenAI's unknown model, with a
    message that says what to do)."""

    default_code = "model_not_available"


def _healthy_first(rows: QuerySet[Deployment]) -> Deployment | None:
    # An endpoint known to be down is the last choice, not excluded: health checks lag behind.
    live = list(rows.filter(status=Deployment.Status.LIVE).select_related("endpoint"))
    live.sort(key=lambda d: (d.endpoint.health == InferenceEndpoint.Health.UNHEALTHY, -d.pk))
    return live[0] if live else None


def route_for_model(*, team: Team, model: str) -> Route:
    """Resolve `model` as the team sees it: one of its fine-tuned models, an alias of one
    (`<family>@<alias>`), or a base model it may use. Raises NotFound (`model_not_found`) for anything
    else, including other teams' adapters, so their existence does not leak."""
    adapter: Adapter | None = None
    if ALIAS_SEPARATOR in model:
        alias = AdapterAlias.objects.filter(
            team=team, family=model.rpartition(ALIAS_SEPARATOR)[0], name=model.rpartition(ALIAS_SEPARATOR)[2]
        ).first()
        adapter = alias.adapter if alias is not None else None
        if adapter is None or adapter.deleted_at is not None:
            raise _unknown_model(model)
    else:
        adapter = Adapter.objects.filter(team=team, name=model, deleted_at__isnull=True).first()
    if adapter is not None:
        deployment = _healthy_first(Deployment.objects.filter(adapter=adapter))
        if deployment is None:
            raise ModelNotServed(
                f"The model {model!r} is not deployed on any inference endpoint yet; deploy it with "
                "POST /api/v1/deployments (or wait for the auto-deploy to go live)",
                param="model",
            )
        endpoint = deployment.endpoint
        return Route(
            model=model,
            served_name=deployment.served_name,
            base_url=endpoint.base_url,
            credential=endpoint.credential,
            endpoint_name=endpoint.name,
            kind=endpoint.kind,
            adapter=adapter,
        )
    base = BaseModel.objects.filter(name=model, enabled=True).first()
    if base is not None and (base.available_to_all or base.teams.filter(pk=team.pk).exists()):
        candidates = [
            endpoint
            for endpoint in endpoints_for_team(team=team).filter(enabled=True)
            if endpoint.served_name_of(base)
        ]
        candidates.sort(key=lambda e: (e.health == InferenceEndpoint.Health.UNHEALTHY, e.team_id is None))
        if not candidates:
            raise ModelNotServed(f"No inference endpoint serves the base model {model!r}", param="model")
        endpoint = candidates[0]
        return Route(
            model=model,
            served_name=endpoint.served_name_of(base) or model,
            base_url=endpoint.base_url,
            credential=endpoint.credential,
            endpoint_name=endpoint.name,
            kind=endpoint.kind,
        )
    raise _unknown_model(model)


def _unknown_model(model: str) -> NotFound:
    return NotFound(
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )
