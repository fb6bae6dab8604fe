"""Writes of the adapter registry: endpoints, aliases, deployments and their push, auto-deploy, purge.

A deployment moves through guarded transitions (`UPDATE … WHERE status = expected`), so a second delivery
of any task finds it moved on and does nothing. The push itself runs in the control worker
(`deployment_run`): compatibility gate, delivery (files written under a shared volume and loaded through
vLLM's API, blobs and a create for Ollama, or a message to the endpoint agent), then a smoke request.
Transient failures (server unreachable, 503) retry with backoff up to TAILOR_DEPLOY_MAX_ATTEMPTS; a
permanent one (the server refused the adapter, the smoke failed) ends the deployment in `failed` with
the server's own words.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from tailor.core.errors import Conflict, InvalidRequest, NotFound
from tailor.core.objectstore import object_store
from tailor.registry.models import AdapterAlias, AutoDeployPolicy, Deployment, InferenceEndpoint
from tailor.teams.models import Team
from tailor.tuning.models import Adapter, BaseModel
from workers.app import AGENT_DEPLOY_TASK, AGENT_UNDEPLOY_TASK, DEPLOY_TASK, UNDEPLOY_TASK, agent_queue
from workers.app import app as celery_app

if TYPE_CHECKING:
    from gpu_runner.endpoints.compat import Incompatibility

logger = logging.getLogger(__name__)

Status = Deployment.Status
# Files a server needs to load a PEFT LoRA adapter; the rest of the adapter folder (tokenizer, chat
# template, metrics) travels too where the server reads a folder, but Ollama takes exactly these.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Only what a server reads: metrics and the training manifest stay in the object store.
NOT_SHIPPED = {"metrics.csv"}


class IncompatibleAdapter(InvalidRequest):
    """The compatibility gate refused the push; every reason is listed."""

    default_code = "incompatible_adapter"

    def __init__(self, problems: Sequence[Incompatibility], *, endpoint: InferenceEndpoint) -> None:
        reasons = "; ".join(problem.message for problem in problems)
        super().__init__(
            f"The adapter cannot be deployed to endpoint {endpoint.name!r}: {reasons}", param="adapter"
        )
        self.problems = list(problems)


# Endpoints ------------------------------------------------------------------------------------------

_URL = re.compile(r"^https?://[^\s/]+(:\d+)?(/[^\s]*)?$")
ALLOWED_VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _clean_endpoint_fields(fields: dict[str, Any], *, allow_unknown_models: bool = False) -> dict[str, Any]:
    kind = fields.get("kind")
    if kind is not None and kind not in InferenceEndpoint.Kind.values:
        raise InvalidRequest(f"kind must be one of {', '.join(InferenceEndpoint.Kind.values)}", param="kind")
    url = fields.get("base_url")
    if url is not None:
        url = str(url).rstrip("/")
        if url.endswith("/v1"):
            url = url[: -len("/v1")]
        if not _URL.match(url):
            raise InvalidRequest(
                f"base_url must be an http(s) URL such as http://vllm:8000, got {url!r}", param="base_url"
            )
        fields["base_url"] = url
    served = fields.get("served_models")
    if served is not None:
        if isinstance(served, list):
            served = {str(name): str(name) for name in served}
        if not isinstance(served, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in served.items()
        ):
            raise InvalidRequest(
                "served_models maps Tailor base model names to the names the server serves them under, "
                'e.g. {"llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct"}',
                param="served_models",
            )
        unknown = (
            []
            if allow_unknown_models
            else sorted(
                set(served)
                - set(BaseModel.objects.filter(name__in=list(served)).values_list("name", flat=True))
            )
        )
        if unknown:
            raise InvalidRequest(
                f"served_models names unknown base models: {', '.join(unknown)}", param="served_models"
            )
        fields["served_models"] = served
    delivery = fields.get("delivery")
    if delivery is not None and delivery not in InferenceEndpoint.Delivery.values:
        raise InvalidRequest(
            f"delivery must be one of {', '.join(InferenceEndpoint.Delivery.values)}", param="delivery"
        )
    return fields


def _check_endpoint(endpoint: InferenceEndpoint) -> None:
    if endpoint.kind == InferenceEndpoint.Kind.OLLAMA:
        endpoint.delivery = InferenceEndpoint.Delivery.HTTP
    elif endpoint.delivery == InferenceEndpoint.Delivery.HTTP:
        raise InvalidRequest(
            "vLLM reads adapters from its own disk: delivery must be shared_volume or agent", param="delivery"
        )
    if endpoint.kind == InferenceEndpoint.Kind.VLLM and endpoint.max_lora_rank not in ALLOWED_VLLM_RANKS:
        raise InvalidRequest(
            f"max_lora_rank must be one of vLLM's values {', '.join(map(str, ALLOWED_VLLM_RANKS))}, "
            f"got {endpoint.max_lora_rank}",
            param="max_lora_rank",
        )
    if endpoint.delivery == InferenceEndpoint.Delivery.SHARED_VOLUME:
        if not endpoint.adapter_root or not Path(endpoint.adapter_root).is_absolute():
            raise InvalidRequest(
                "shared_volume delivery needs adapter_root: the absolute path where the registry writes adapters",
                param="adapter_root",
            )
        if not endpoint.served_adapter_root:
            endpoint.served_adapter_root = endpoint.adapter_root


def endpoint_create(
    *,
    team: Team | None,
    name: str,
    kind: str,
    base_url: str,
    _allow_unknown_models: bool = False,
    **fields: Any,
) -> InferenceEndpoint:
    """Register an inference endpoint for `team` (None: a shared endpoint, operators only)."""
    fields = _clean_endpoint_fields(
        {"kind": kind, "base_url": base_url, **fields}, allow_unknown_models=_allow_unknown_models
    )
    endpoint = InferenceEndpoint(team=team, name=name, **fields)
    _check_endpoint(endpoint)
    if InferenceEndpoint.objects.filter(team=team, name=name).exists():
        raise Conflict(f"An endpoint named {name!r} exists already", param="name")
    endpoint.save()
    return endpoint


def endpoint_update(
    *, endpoint: InferenceEndpoint, _allow_unknown_models: bool = False, **fields: Any
) -> InferenceEndpoint:
    """Change an endpoint's settings; the credential is replaced only when given."""
    fields = _clean_endpoint_fields(dict(fields), allow_unknown_models=_allow_unknown_models)
    for key, value in fields.items():
        setattr(endpoint, key, value)
    _check_endpoint(endpoint)
    endpoint.save()
    return endpoint


def endpoint_delete(*, endpoint: InferenceEndpoint) -> None:
    """Remove an endpoint that serves nothing any more (undeploy its adapters first)."""
    active = endpoint.deployments.filter(status__in=Deployment.ACTIVE).count()
    if active:
        raise Conflict(
            f"Endpoint {endpoint.name!r} still has {active} active deployments; undeploy them first"
        )
    endpoint.policies.all().delete()
    endpoint.deployments.all().delete()
    endpoint.delete()


def endpoints_sync(*, entries: Sequence[Mapping[str, Any]]) -> list[InferenceEndpoint]:
    """Create or update the shared endpoints an operator lists in TAILOR_ENDPOINTS (JSON), idempotently.
    Each entry: name, kind, url, base_models (list or mapping), delivery, adapter_root,
    served_adapter_root, max_lora_rank, max_adapters, credential, auto_deploy."""
    synced = []
    for number, entry in enumerate(entries, start=1):
        where = f"TAILOR_ENDPOINTS entry {number}"
        if (
            not isinstance(entry, Mapping)
            or not entry.get("name")
            or not entry.get("url")
            or not entry.get("kind")
        ):
            raise InvalidRequest(f"{where}: needs at least name, kind and url")
        fields: dict[str, Any] = {
            "kind": entry["kind"],
            "base_url": entry["url"],
            "served_models": entry.get("base_models") or entry.get("served_models") or {},
            "delivery": entry.get("delivery")
            or ("http" if entry["kind"] == "ollama" else InferenceEndpoint.Delivery.SHARED_VOLUME),
            "adapter_root": entry.get("adapter_root") or "",
            "served_adapter_root": entry.get("served_adapter_root") or "",
            "max_lora_rank": int(entry.get("max_lora_rank") or 16),
            "max_adapters": entry.get("max_adapters"),
            "credential": entry.get("credential") or "",
            "auto_deploy_all_teams": bool(entry.get("auto_deploy", False)),
        }
        try:
            existing = InferenceEndpoint.objects.filter(team=None, name=entry["name"]).first()
            if existing is None:
                # Operators may list base models before registering them (a fresh stack): routes to
                # them start working once `tailor basemodel add` registers the name.
                synced.append(
                    endpoint_create(team=None, name=str(entry["name"]), _allow_unknown_models=True, **fields)
                )
            else:
                synced.append(endpoint_update(endpoint=existing, _allow_unknown_models=True, **fields))
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where} ({entry['name']}): {exc.message}") from None
    return synced


def endpoint_check_health(*, endpoint: InferenceEndpoint) -> InferenceEndpoint:
    """Ask the server whether it is up (and which version it runs) and record the answer."""
    from gpu_runner.endpoints.errors import EndpointError
    from gpu_runner.endpoints.ollama import OllamaClient
    from gpu_runner.endpoints.vllm import VLLMClient

    timeout = settings.TAILOR_ENDPOINT_TIMEOUT
    health, error, version = InferenceEndpoint.Health.HEALTHY, "", endpoint.server_version
    served: set[str] | None = None
    try:
        if endpoint.kind == InferenceEndpoint.Kind.OLLAMA:
            ollama = OllamaClient(endpoint.base_url, api_key=endpoint.credential or None, timeout=timeout)
            version = ollama.version()
            served = {str(model.get("name")) for model in ollama.tags()}
        else:
            vllm = VLLMClient(endpoint.base_url, api_key=endpoint.credential or None, timeout=timeout)
            vllm.health()
            served = {str(card.get("id")) for card in vllm.models()}
    except EndpointError as exc:
        health, error = InferenceEndpoint.Health.UNHEALTHY, str(exc)
    InferenceEndpoint.objects.filter(pk=endpoint.pk).update(
        health=health, health_error=error, health_checked_at=timezone.now(), server_version=version or ""
    )
    if served is not None:
        _repush_missing(endpoint, served)
    endpoint.refresh_from_db()
    return endpoint


def _ollama_names(name: str) -> set[str]:
    return {name, name if ":" in name else f"{name}:latest"}


def _repush_missing(endpoint: InferenceEndpoint, served: set[str]) -> list[str]:
    """Deployments `live` on `endpoint` that it no longer serves (vLLM forgets runtime-loaded adapters when
    it restarts) go back to pending and are pushed again. Returns their ids."""
    missing = []
    for deployment in Deployment.objects.filter(endpoint=endpoint, status=Status.LIVE):
        names = (
            _ollama_names(deployment.served_name)
            if endpoint.kind == InferenceEndpoint.Kind.OLLAMA
            else {deployment.served_name}
        )
        if names & served:
            continue
        with transaction.atomic():
            moved = _move(
                deployment,
                from_=[Status.LIVE],
                to=Status.PENDING,
                attempts=0,
                next_attempt_at=None,
                reason_code="endpoint_lost_adapter",
                last_error="The endpoint no longer served the adapter (restarted?); pushing it again",
            )
            if moved:
                _send_after_commit(DEPLOY_TASK, deployment.public_id)
                missing.append(deployment.public_id)
    if missing:
        logger.warning("%s lost %s; pushing again", endpoint.name, ", ".join(missing))
    return missing


# Aliases and adapters -------------------------------------------------------------------------------


def alias_set(*, team: Team, name: str, adapter: Adapter) -> AdapterAlias:
    """Point `<family>@<name>` at `adapter` (creating the alias, or moving it: the rollback)."""
    if adapter.team_id != team.pk or adapter.deleted_at is not None:
        raise NotFound(f"No adapter {adapter.name!r}", param="adapter")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,59}", name):
        raise InvalidRequest(
            "An alias name is 1-60 lowercase letters, digits, '-' or '_', e.g. production", param="name"
        )
    with transaction.atomic():
        alias, created = AdapterAlias.objects.select_for_update().get_or_create(
            team=team, family=adapter.family, name=name, defaults={"adapter": adapter}
        )
        if not created and alias.adapter_id != adapter.pk:
            previous = alias.adapter.version
            alias.adapter = adapter
            alias.save(update_fields=["adapter", "updated_at"])
            logger.info("alias %s moved from v%s to v%s", alias.model_id, previous, adapter.version)
    return alias


def alias_delete(*, alias: AdapterAlias) -> None:
    alias.delete()


def adapter_delete(*, team: Team, adapter: Adapter) -> Adapter:
    """Soft-delete an adapter version: clients stop seeing it at once, its deployments are undeployed,
    and the purge task removes its objects once nothing serves it. An alias pointing at it must be moved
    or deleted first, so a rollback target never disappears under a running service."""
    if adapter.team_id != team.pk:
        raise NotFound(f"No adapter {adapter.name!r}")
    aliases = [alias.model_id for alias in adapter.aliases.all()]
    if aliases:
        raise Conflict(
            f"Adapter {adapter.name!r} is the target of {', '.join(aliases)}; move or delete the alias first",
            param="adapter",
        )
    with transaction.atomic():
        Adapter.objects.filter(pk=adapter.pk, deleted_at__isnull=True).update(deleted_at=timezone.now())
        for deployment in Deployment.objects.filter(adapter=adapter, status__in=Deployment.ACTIVE):
            deployment_undeploy(deployment=deployment)
    adapter.refresh_from_db()
    return adapter


def adapters_purge(*, limit: int = 50) -> int:
    """Remove the objects of soft-deleted adapters that no deployment still uses. Returns how many."""
    store = object_store()
    purged = 0
    candidates = (
        Adapter.objects.filter(deleted_at__isnull=False, purged_at__isnull=True)
        .exclude(deployments__status__in=Deployment.ACTIVE)
        .order_by("deleted_at")[:limit]
    )
    for adapter in candidates:
        prefix = adapter.prefix.rstrip("/") + "/"
        store.delete_prefix(prefix)
        Adapter.objects.filter(pk=adapter.pk).update(purged_at=timezone.now())
        purged += 1
        logger.info("purged adapter %s (%s)", adapter.name, prefix)
    return purged


# Compatibility gate -----------------------------------------------------------------------------------


# Base model prefixes name their revision (`models/<name>/<revision>`), so a prefix's config never changes.
_architectures: dict[str, str] = {}


def _base_architecture(base_model: BaseModel) -> str:
    """HF `model_type` of the base (`llama`, `gemma2`, …), read once per revision from its config.json in
    the object store ("" when unreadable, which only loses the architecture checks, and is asked again)."""
    key = base_model.prefix.rstrip("/")
    if key not in _architectures:
        try:
            config = json.loads(object_store().get_bytes(posixpath.join(key, "config.json")))
        except Exception:  # noqa: BLE001 - an unreadable config only loses the architecture check
            return ""
        _architectures[key] = str(config.get("model_type") or "")
    return _architectures[key]


def compatibility_problems(*, adapter: Adapter, endpoint: InferenceEndpoint) -> list[Incompatibility]:
    """Every reason `endpoint` would refuse `adapter`, checked before anything is pushed."""
    from gpu_runner.endpoints.compat import Incompatibility, check_compatibility

    problems = list(
        check_compatibility(
            kind=endpoint.kind,
            adapter_config=adapter.config or _config_from_fields(adapter),
            adapter_base_model=adapter.base_model.name,
            endpoint_base_models=list((endpoint.served_models or {}).keys()),
            base_architecture=_base_architecture(adapter.base_model),
            # Ollama (llama.cpp) has no LoRA rank limit; vLLM's is a server flag.
            max_lora_rank=endpoint.max_lora_rank if endpoint.kind == InferenceEndpoint.Kind.VLLM else None,
            formats=list(adapter.formats or ["peft-safetensors"]),
        )
    )
    if endpoint.max_adapters:
        live = (
            Deployment.objects.filter(endpoint=endpoint, status__in=Deployment.ACTIVE)
            .exclude(adapter=adapter)
            .count()
        )
        if live >= endpoint.max_adapters:
            problems.append(
                Incompatibility(
                    code="endpoint_full",
                    message=f"endpoint {endpoint.name!r} already holds {live} adapters, its limit (max_adapters)",
                )
            )
    return problems


def _config_from_fields(adapter: Adapter) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "target_modules": adapter.target_modules,
        "use_dora": adapter.use_dora,
        "use_rslora": adapter.use_rslora,
        "bias": "none",
        "modules_to_save": None,
    }


# Deployments ------------------------------------------------------------------------------------------


def _served_name(adapter: Adapter, endpoint: InferenceEndpoint) -> str:
    if endpoint.kind == InferenceEndpoint.Kind.OLLAMA:
        from gpu_runner.endpoints.ollama import ollama_model_name

        return ollama_model_name(adapter.name, adapter.version)
    return adapter.name


def _dir_name(adapter: Adapter) -> str:
    # Folder names carry no colons (some filesystems and volume drivers refuse them) and are unique.
    return f"{adapter.team.slug}--{adapter.job.public_id}"


def deployment_create(
    *, team: Team, adapter: Adapter, endpoint: InferenceEndpoint, auto: bool = False
) -> Deployment:
    """Deploy `adapter` to `endpoint`. The compatibility gate runs first: an incompatible adapter is refused
    (`IncompatibleAdapter`, nothing pushed). The push happens in the control worker after commit. Asking
    again for an adapter already active on that endpoint returns the existing deployment."""
    if adapter.team_id != team.pk or adapter.deleted_at is not None:
        raise NotFound(f"No adapter {adapter.name!r}", param="adapter")
    if endpoint.team_id not in (None, team.pk):
        raise NotFound(f"No endpoint {endpoint.public_id!r}", param="endpoint")
    if not endpoint.enabled:
        raise InvalidRequest(f"Endpoint {endpoint.name!r} is disabled", param="endpoint")
    existing = Deployment.objects.filter(
        adapter=adapter, endpoint=endpoint, status__in=Deployment.ACTIVE
    ).first()
    if existing is not None:
        return existing
    problems = compatibility_problems(adapter=adapter, endpoint=endpoint)
    if problems:
        raise IncompatibleAdapter(problems, endpoint=endpoint)
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                team=team,
                adapter=adapter,
                endpoint=endpoint,
                served_name=_served_name(adapter, endpoint),
                auto=auto,
            )
    except IntegrityError:
        # Another request created it at the same moment.
        return Deployment.objects.get(adapter=adapter, endpoint=endpoint, status__in=Deployment.ACTIVE)
    _send_after_commit(DEPLOY_TASK, deployment.public_id)
    return deployment


def deployment_undeploy(*, deployment: Deployment) -> Deployment:
    """Take a deployment down: a live one is unloaded by the control worker, a pending one just stops."""
    with transaction.atomic():
        row = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if row.status == Status.PENDING:
            _move(row, from_=[Status.PENDING], to=Status.UNDEPLOYED, finished_at=timezone.now())
        elif row.status in (Status.LIVE, Status.DEPLOYING, Status.FAILED):
            # deploying: the push may be half done; failed: a rollback may have left files behind.
            if _move(row, from_=[row.status], to=Status.UNDEPLOYING):
                _send_after_commit(UNDEPLOY_TASK, row.public_id)
    deployment.refresh_from_db()
    return deployment


def adapter_auto_deploy(*, adapter: Adapter) -> list[Deployment]:
    """A job succeeded: deploy its adapter where the team's policies (and shared endpoints with auto-deploy
    for every team) say. An incompatible endpoint gets a failed deployment that says why, so the team sees
    it; nothing is pushed there."""
    team = adapter.team
    endpoints: dict[int, InferenceEndpoint] = {}
    policies = AutoDeployPolicy.objects.filter(team=team, enabled=True).select_related("endpoint")
    for policy in policies:
        if policy.base_model_id not in (None, adapter.base_model_id):
            continue
        endpoints[policy.endpoint_id] = policy.endpoint
    for endpoint in InferenceEndpoint.objects.filter(team=None, auto_deploy_all_teams=True, enabled=True):
        endpoints.setdefault(endpoint.pk, endpoint)
    made = []
    for endpoint in endpoints.values():
        if not endpoint.enabled or endpoint.served_name_of(adapter.base_model) is None:
            continue
        try:
            made.append(deployment_create(team=team, adapter=adapter, endpoint=endpoint, auto=True))
        except IncompatibleAdapter as exc:
            made.append(
                Deployment.objects.create(
                    team=team,
                    adapter=adapter,
                    endpoint=endpoint,
                    served_name=_served_name(adapter, endpoint),
                    auto=True,
                    status=Status.FAILED,
                    reason_code=exc.problems[0].code if exc.problems else "incompatible_adapter",
                    last_error=exc.message,
                    finished_at=timezone.now(),
                )
            )
    return made


def policy_create(
    *, team: Team, endpoint: InferenceEndpoint, base_model: BaseModel | None = None
) -> AutoDeployPolicy:
    if endpoint.team_id not in (None, team.pk):
        raise NotFound(f"No endpoint {endpoint.public_id!r}", param="endpoint")
    policy, _ = AutoDeployPolicy.objects.get_or_create(
        team=team, endpoint=endpoint, base_model=base_model, defaults={"enabled": True}
    )
    if not policy.enabled:
        policy.enabled = True
        policy.save(update_fields=["enabled"])
    return policy


def policy_delete(*, policy: AutoDeployPolicy) -> None:
    policy.delete()


# The push (control worker) ----------------------------------------------------------------------------


def _send_after_commit(task: str, deployment_id: str, *, countdown: float | None = None) -> None:
    transaction.on_commit(
        partial(celery_app.send_task, task, args=[deployment_id], countdown=countdown), robust=True
    )


def _move(deployment: Deployment, *, from_: Iterable[str], to: str, **fields: Any) -> bool:
    rows = Deployment.objects.filter(pk=deployment.pk, status__in=list(from_))
    if not rows.update(status=to, updated_at=timezone.now(), **fields):
        return False
    deployment.refresh_from_db()
    return True


def _locked(deployment_id: str) -> Deployment | None:
    return (
        Deployment.objects.select_for_update(of=("self",))
        .select_related("adapter", "adapter__team", "adapter__job", "adapter__base_model", "endpoint", "team")
        .filter(public_id=deployment_id)
        .first()
    )


def _shipped_files(adapter: Adapter) -> dict[str, dict[str, Any]]:
    return {name: dict(entry) for name, entry in (adapter.files or {}).items() if name not in NOT_SHIPPED}


def _backoff(attempts: int) -> float:
    base = float(settings.TAILOR_DEPLOY_RETRY_BASE_SECONDS)
    return min(base * (2 ** max(0, attempts - 1)), 300.0)


def deployment_run(*, deployment_id: str) -> Deployment | None:
    """`tailor.control.deploy`: push a pending deployment. Safe to deliver twice: only the delivery that
    moves it from pending to deploying pushes."""
    from gpu_runner.endpoints.errors import EndpointError

    now = timezone.now()
    with transaction.atomic():
        deployment = _locked(deployment_id)
        if deployment is None or deployment.status != Status.PENDING:
            return deployment
        if deployment.next_attempt_at and deployment.next_attempt_at > now + timedelta(seconds=1):
            return deployment  # a retry that is not due; the sweep sends it when it is
        _move(
            deployment,
            from_=[Status.PENDING],
            to=Status.DEPLOYING,
            attempts=deployment.attempts + 1,
            started_at=now,
            next_attempt_at=None,
        )
    adapter, endpoint = deployment.adapter, deployment.endpoint
    # The gate again: the endpoint may have changed since the request, and auto-deploys come here directly.
    problems = compatibility_problems(adapter=adapter, endpoint=endpoint)
    if problems:
        error = IncompatibleAdapter(problems, endpoint=endpoint)
        return _fail(deployment, code=problems[0].code, message=error.message)
    try:
        if endpoint.kind == InferenceEndpoint.Kind.OLLAMA:
            _push_ollama(deployment)
        elif endpoint.delivery == InferenceEndpoint.Delivery.AGENT:
            celery_app.send_task(
                AGENT_DEPLOY_TASK,
                kwargs={"order": _agent_order(deployment)},
                queue=agent_queue(endpoint.name),
            )
            return deployment  # the agent reports back (deployment_pushed)
        else:
            _push_vllm_shared_volume(deployment)
    except EndpointError as exc:
        return _push_failed(deployment, exc)
    return _smoke_and_go_live(deployment)


def _agent_order(deployment: Deployment) -> dict[str, Any]:
    adapter = deployment.adapter
    return {
        "deployment_id": deployment.public_id,
        "attempt": deployment.attempts,
        "lora_name": deployment.served_name,
        "prefix": adapter.prefix,
        "files": _shipped_files(adapter),
        "dir_name": _dir_name(adapter),
        "base_model": deployment.endpoint.served_name_of(adapter.base_model),
    }


def _push_vllm_shared_volume(deployment: Deployment) -> None:
    from gpu_runner.endpoints.delivery import materialize
    from gpu_runner.endpoints.vllm import VLLMClient

    adapter, endpoint = deployment.adapter, deployment.endpoint
    dir_name = _dir_name(adapter)
    materialize(
        store=object_store(),
        prefix=adapter.prefix,
        files=_shipped_files(adapter),
        dest_root=Path(endpoint.adapter_root),
        dir_name=dir_name,
    )
    served_path = posixpath.join(endpoint.served_adapter_root or endpoint.adapter_root, dir_name)
    Deployment.objects.filter(pk=deployment.pk).update(adapter_path=served_path)
    client = VLLMClient(
        endpoint.base_url, api_key=endpoint.credential or None, timeout=settings.TAILOR_ENDPOINT_TIMEOUT
    )
    client.load(deployment.served_name, served_path, load_inplace=True)


def _push_ollama(deployment: Deployment) -> None:
    from gpu_runner.endpoints.errors import EndpointError
    from gpu_runner.endpoints.ollama import OllamaClient

    adapter, endpoint = deployment.adapter, deployment.endpoint
    client = OllamaClient(
        endpoint.base_url, api_key=endpoint.credential or None, timeout=settings.TAILOR_ENDPOINT_TIMEOUT
    )
    version = client.version()
    if version and version != endpoint.server_version:
        InferenceEndpoint.objects.filter(pk=endpoint.pk).update(server_version=version)
    store = object_store()
    digests: dict[str, str] = {}
    files = _shipped_files(adapter)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        entry = files.get(name)
        if not entry or not entry.get("sha256"):
            raise EndpointError(
                f"the adapter has no {name} with a digest in its manifest",
                transient=False,
                status=None,
                reason_code="adapter_incomplete",
            )
        digest = f"sha256:{entry['sha256']}"
        key = posixpath.join(adapter.prefix.rstrip("/"), name)
        client.ensure_blob(digest, partial(store.open, key))
        digests[name] = digest
    base = endpoint.served_name_of(adapter.base_model) or adapter.base_model.name
    client.create(deployment.served_name, from_=base, adapters=digests)
    Deployment.objects.filter(pk=deployment.pk).update(adapter_path=deployment.served_name)


def _smoke_and_go_live(deployment: Deployment) -> Deployment:
    from gpu_runner.endpoints.errors import EndpointError
    from gpu_runner.endpoints.smoke import smoke_chat

    endpoint = deployment.endpoint
    try:
        smoke_chat(
            endpoint.base_url,
            model=deployment.served_name,
            api_key=endpoint.credential or None,
            timeout=settings.TAILOR_SMOKE_TIMEOUT,
        )
    except EndpointError as exc:
        _unload_quietly(deployment)
        return _fail(
            deployment,
            code="smoke_failed",
            message=f"The smoke request after the push failed, so the adapter was unloaded again: {exc}",
        )
    with transaction.atomic():
        row = _locked(deployment.public_id)
        if row is None:
            return deployment
        if row.status == Status.DEPLOYING:
            _move(
                row,
                from_=[Status.DEPLOYING],
                to=Status.LIVE,
                live_at=timezone.now(),
                reason_code="",
                last_error="",
            )
            logger.info("%s live: %s on %s", row.public_id, row.served_name, row.endpoint.name)
        return row


def _fail(deployment: Deployment, *, code: str, message: str) -> Deployment:
    _move(
        deployment,
        from_=[Status.DEPLOYING, Status.PENDING],
        to=Status.FAILED,
        reason_code=code[:64],
        last_error=message,
        finished_at=timezone.now(),
    )
    logger.warning("%s failed (%s): %s", deployment.public_id, code, message)
    return deployment


def _push_failed(deployment: Deployment, exc: Any) -> Deployment:
    if exc.transient and deployment.attempts < settings.TAILOR_DEPLOY_MAX_ATTEMPTS:
        delay = _backoff(deployment.attempts)
        with transaction.atomic():
            moved = _move(
                deployment,
                from_=[Status.DEPLOYING],
                to=Status.PENDING,
                reason_code=exc.reason_code[:64],
                last_error=f"{exc} (attempt {deployment.attempts}; retrying in {delay:.0f} s)",
                next_attempt_at=timezone.now() + timedelta(seconds=delay),
            )
            if moved:
                _send_after_commit(DEPLOY_TASK, deployment.public_id, countdown=delay)
        return deployment
    note = "" if not exc.transient else f" (gave up after {deployment.attempts} attempts)"
    _unload_quietly(deployment)
    return _fail(deployment, code=exc.reason_code or "endpoint_error", message=f"{exc}{note}")


def deployment_pushed(
    *, deployment_id: str, attempt: int, action: str, error: Mapping[str, Any] | None
) -> Deployment | None:
    """`tailor.control.deployment_pushed`: the endpoint agent loaded (or unloaded) the adapter, or could
    not. A report of an older attempt is ignored."""
    from gpu_runner.endpoints.errors import EndpointError

    deployment = (
        Deployment.objects.select_related("endpoint", "adapter").filter(public_id=deployment_id).first()
    )
    if deployment is None:
        return None
    if action == "undeploy":
        if deployment.status == Status.UNDEPLOYING:
            _move(deployment, from_=[Status.UNDEPLOYING], to=Status.UNDEPLOYED, finished_at=timezone.now())
        return deployment
    if deployment.status != Status.DEPLOYING or deployment.attempts != attempt:
        return deployment
    if error:
        exc = EndpointError(
            str(error.get("message") or "the endpoint agent failed"),
            transient=bool(error.get("transient")),
            status=error.get("status") if isinstance(error.get("status"), int) else None,
            reason_code=str(error.get("reason_code") or "agent_error"),
        )
        return _push_failed(deployment, exc)
    return _smoke_and_go_live(deployment)


def _unload_quietly(deployment: Deployment) -> None:
    """Best-effort rollback after a failed smoke or a refused push: nothing half-loaded stays behind."""
    from gpu_runner.endpoints.errors import EndpointError

    try:
        _unload(deployment)
    except EndpointError as exc:
        logger.warning("%s: rollback unload failed: %s", deployment.public_id, exc)


def _unload(deployment: Deployment) -> bool:
    """Unload from the server and remove delivered files. True when done here, False when the agent was
    asked to do it and will report."""
    from gpu_runner.endpoints.delivery import remove
    from gpu_runner.endpoints.ollama import OllamaClient
    from gpu_runner.endpoints.vllm import VLLMClient

    endpoint = deployment.endpoint
    timeout = settings.TAILOR_ENDPOINT_TIMEOUT
    if endpoint.kind == InferenceEndpoint.Kind.OLLAMA:
        OllamaClient(endpoint.base_url, api_key=endpoint.credential or None, timeout=timeout).delete(
            deployment.served_name
        )
        return True
    if endpoint.delivery == InferenceEndpoint.Delivery.AGENT:
        celery_app.send_task(
            AGENT_UNDEPLOY_TASK,
            kwargs={"order": {**_agent_order(deployment), "attempt": deployment.attempts}},
            queue=agent_queue(endpoint.name),
        )
        return False
    VLLMClient(endpoint.base_url, api_key=endpoint.credential or None, timeout=timeout).unload(
        deployment.served_name
    )
    if endpoint.adapter_root:
        remove(Path(endpoint.adapter_root), _dir_name(deployment.adapter))
    return True


def deployment_run_undeploy(*, deployment_id: str) -> Deployment | None:
    """`tailor.control.undeploy`: unload an undeploying deployment; transient errors retry."""
    from gpu_runner.endpoints.errors import EndpointError

    deployment = (
        Deployment.objects.select_related("endpoint", "adapter", "adapter__team", "adapter__job")
        .filter(public_id=deployment_id)
        .first()
    )
    if deployment is None or deployment.status != Status.UNDEPLOYING:
        return deployment
    try:
        done = _unload(deployment)
    except EndpointError as exc:
        if exc.transient:
            Deployment.objects.filter(pk=deployment.pk).update(last_error=f"undeploy: {exc} (retrying)")
            raise
        Deployment.objects.filter(pk=deployment.pk).update(last_error=f"undeploy: {exc}")
        done = True
    if done:
        _move(deployment, from_=[Status.UNDEPLOYING], to=Status.UNDEPLOYED, finished_at=timezone.now())
    return deployment


def deployments_due(*, now: datetime | None = None) -> list[str]:
    """The sweep: re-send pending deployments whose retry is due (or whose message was lost), and
    undeploys that never finished. Returns the ids sent."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.TAILOR_DEPLOY_STALE_SECONDS)
    sent = []
    due = Deployment.objects.filter(
        Q(status=Status.PENDING)
        & (Q(next_attempt_at__lte=now) | Q(next_attempt_at__isnull=True, updated_at__lte=stale))
    )
    for public_id in due.values_list("public_id", flat=True)[:100]:
        celery_app.send_task(DEPLOY_TASK, args=[public_id])
        sent.append(public_id)
    # A push that died with its worker: deploying for too long goes back to pending once.
    for deployment in Deployment.objects.filter(status=Status.DEPLOYING, updated_at__lte=stale)[:100]:
        if deployment.attempts >= settings.TAILOR_DEPLOY_MAX_ATTEMPTS:
            _fail(deployment, code="deploy_timeout", message="The push did not finish in time")
        elif _move(deployment, from_=[Status.DEPLOYING], to=Status.PENDING, next_attempt_at=now):
            celery_app.send_task(DEPLOY_TASK, args=[deployment.public_id])
            sent.append(deployment.public_id)
    for public_id in Deployment.objects.filter(status=Status.UNDEPLOYING, updated_at__lte=stale).values_list(
        "public_id", flat=True
    )[:100]:
        celery_app.send_task(UNDEPLOY_TASK, args=[public_id])
        sent.append(public_id)
    return sent
