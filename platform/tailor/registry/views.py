"""The registry's native API views, thin: parse input, call one selector or service, serialize the result.

Adapters (versions of a family) with their files, aliases, inference endpoints, deployments and auto-deploy
policies, all scoped to the caller's team: another team's objects answer 404 exactly like missing ones.
Shared endpoints (run by operators) are usable by every team and changeable by none.
"""

from __future__ import annotations

import base64
import posixpath
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any, BinaryIO

from django.conf import settings
from django.db.models import Prefetch, prefetch_related_objects
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gpu_runner.storage.errors import ObjectNotFound
from tailor.core.authentication import request_team
from tailor.core.errors import InvalidRequest, NotFound, PermissionDenied
from tailor.core.objectstore import object_store
from tailor.core.pagination import cursor_page
from tailor.registry.models import Deployment, InferenceEndpoint
from tailor.registry.selectors import (
    adapter_get,
    adapter_list,
    alias_get,
    alias_list,
    deployment_get,
    deployment_list,
    endpoint_get,
    endpoints_for_team,
    policy_get,
    policy_list,
)
from tailor.registry.serializers import (
    AdapterDownloadSerializer,
    AdapterGetParamsSerializer,
    AdapterListParamsSerializer,
    AdapterListSerializer,
    AdapterSerializer,
    AliasListParamsSerializer,
    AliasListSerializer,
    AliasSerializer,
    AliasSetSerializer,
    DeploymentCreateSerializer,
    DeploymentListParamsSerializer,
    DeploymentListSerializer,
    DeploymentSerializer,
    InferenceEndpointCreateSerializer,
    InferenceEndpointListSerializer,
    InferenceEndpointSerializer,
    InferenceEndpointUpdateSerializer,
    PolicyCreateSerializer,
    PolicyListSerializer,
    PolicySerializer,
)
from tailor.registry.services import (
    adapter_delete,
    alias_delete,
    alias_set,
    deployment_create,
    deployment_undeploy,
    endpoint_check_health,
    endpoint_create,
    endpoint_delete,
    endpoint_update,
    policy_create,
    policy_delete,
)
from tailor.tuning.models import Adapter
from tailor.tuning.selectors import base_model_for_team

STREAM_CHUNK = 256 * 1024
SHA256_HEADER = "X-Tailor-Sha256"

ADAPTER_NAME = OpenApiParameter(
    "name",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    description="The fine_tuned_model name (`ft:…`), or an alias `<family>@<alias>`.",
)
FILENAME = OpenApiParameter("filename", OpenApiTypes.STR, OpenApiParameter.PATH)
ALIAS_ID = OpenApiParameter(
    "model_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="`<family>@<alias>`."
)
ENDPOINT_ID = OpenApiParameter(
    "endpoint_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="Its id (`ep-…`) or name."
)
DEPLOYMENT_ID = OpenApiParameter("deployment_id", OpenApiTypes.STR, OpenApiParameter.PATH)
POLICY_ID = OpenApiParameter("policy_id", OpenApiTypes.STR, OpenApiParameter.PATH)


def _with_relations(adapters: Sequence[Adapter]) -> Sequence[Adapter]:
    """Load the aliases and deployments the adapter object shows, in two queries for a whole page."""
    prefetch_related_objects(
        list(adapters),
        "aliases",
        Prefetch("deployments", queryset=Deployment.objects.select_related("endpoint").order_by("-id")),
    )
    return adapters


def _adapter_data(adapter: Adapter) -> dict[str, Any]:
    return dict(AdapterSerializer(_with_relations([adapter])[0]).data)


def _own_endpoint(request: Request, endpoint_id: str) -> InferenceEndpoint:
    """An endpoint the team may change: its own. A shared one is visible but read-only (403)."""
    endpoint = endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
    if endpoint.shared:
        raise PermissionDenied(
            f"Endpoint {endpoint.name!r} is shared: operators manage it (TAILOR_ENDPOINTS, `tailor endpoint`); "
            "teams can deploy to it but not change it",
            param="endpoint",
        )
    return endpoint


# Adapters ------------------------------------------------------------------------------------------------


class AdapterListView(APIView):
    @extend_schema(
        operation_id="adapters_list",
        summary="The team's adapter versions, newest first",
        parameters=[AdapterListParamsSerializer],
        responses=AdapterListSerializer,
    )
    def get(self, request: Request) -> Response:
        params = AdapterListParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        page = adapter_list(team=request_team(request), **params.validated_data)
        data = AdapterSerializer(_with_relations(page.items), many=True).data
        return Response(page.as_payload(list(data)))


class AdapterDetailView(APIView):
    @extend_schema(
        operation_id="adapters_retrieve",
        summary="Retrieve an adapter version (by name or alias)",
        parameters=[ADAPTER_NAME, AdapterGetParamsSerializer],
        responses=AdapterSerializer,
    )
    def get(self, request: Request, name: str) -> Response:
        params = AdapterGetParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        adapter = adapter_get(team=request_team(request), name=name, **params.validated_data)
        return Response(_adapter_data(adapter))

    @extend_schema(
        operation_id="adapters_delete",
        summary="Delete an adapter version: hidden at once, undeployed, its files purged later",
        parameters=[ADAPTER_NAME],
        responses={200: AdapterSerializer, 409: OpenApiResponse(description="An alias points at it")},
    )
    def delete(self, request: Request, name: str) -> Response:
        team = request_team(request)
        adapter = adapter_delete(team=team, adapter=adapter_get(team=team, name=name))
        return Response(_adapter_data(adapter))


class AdapterFileView(APIView):
    @extend_schema(
        operation_id="adapters_file",
        summary="Download one file of an adapter (its sha256 in the X-Tailor-Sha256 header)",
        parameters=[ADAPTER_NAME, FILENAME],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )
    def get(self, request: Request, name: str, filename: str) -> StreamingHttpResponse:
        adapter = adapter_get(team=request_team(request), name=name)
        entry = (adapter.files or {}).get(filename)
        if not isinstance(entry, dict):
            raise NotFound(
                f"Adapter {adapter.name!r} has no file {filename!r}; it has: {', '.join(sorted(adapter.files))}",
                param="filename",
            )
        store = object_store()
        key = posixpath.join(adapter.prefix.rstrip("/"), filename)
        try:
            size = store.size(key)
            stream = store.open(key)
        except ObjectNotFound:
            raise NotFound(
                f"The file {filename!r} of adapter {adapter.name!r} is missing from the object store",
                param="filename",
            ) from None
        response = StreamingHttpResponse(_iter_chunks(stream), content_type="application/octet-stream")
        response["Content-Length"] = str(size)
        response["Content-Disposition"] = (
            content_disposition_header(as_attachment=True, filename=filename) or "attachment"
        )
        sha256 = str(entry.get("sha256") or "")
        if sha256:
            response[SHA256_HEADER] = sha256
            # RFC 9530: the digest of the whole representation, which HTTP clients can check themselves.
            response["Repr-Digest"] = f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"
        return response

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # Raw bytes whatever the client accepts; errors still render as the JSON envelope.
        return super().perform_content_negotiation(request, force=True)


class AdapterDownloadView(APIView):
    @extend_schema(
        operation_id="adapters_download",
        summary="URLs of every file of an adapter: presigned object-store URLs where the store can "
        "presign (S3), otherwise Tailor's stream URLs",
        parameters=[ADAPTER_NAME],
        responses=AdapterDownloadSerializer,
    )
    def get(self, request: Request, name: str) -> Response:
        adapter = adapter_get(team=request_team(request), name=name)
        store = object_store()
        ttl = settings.TAILOR_DOWNLOAD_URL_SECONDS
        files = []
        for filename, entry in sorted((adapter.files or {}).items()):
            if not isinstance(entry, dict):
                continue
            key = posixpath.join(adapter.prefix.rstrip("/"), filename)
            url = store.presign_get(key, expires_in=ttl, filename=filename)
            expires_at: int | None = int((timezone.now() + timedelta(seconds=ttl)).timestamp())
            if not url.startswith(("http://", "https://")):
                # A local store "presigns" to a file:// path only this host can read: stream through Tailor.
                url = request.build_absolute_uri(
                    reverse("native:adapter-file", kwargs={"name": adapter.name, "filename": filename})
                )
                expires_at = None
            files.append(
                {
                    "name": filename,
                    "bytes": int(entry.get("bytes") or 0),
                    "sha256": str(entry.get("sha256") or ""),
                    "url": url,
                    "expires_at": expires_at,
                }
            )
        return Response(AdapterDownloadSerializer({"adapter": adapter.name, "files": files}).data)


def _iter_chunks(stream: BinaryIO) -> Iterator[bytes]:
    try:
        while chunk := stream.read(STREAM_CHUNK):
            yield chunk
    finally:
        stream.close()


# Aliases -------------------------------------------------------------------------------------------------


class AliasListCreateView(APIView):
    @extend_schema(
        operation_id="aliases_list",
        summary="The team's adapter aliases",
        parameters=[AliasListParamsSerializer],
        responses=AliasListSerializer,
    )
    def get(self, request: Request) -> Response:
        params = AliasListParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        aliases = alias_list(team=request_team(request), **params.validated_data)
        return Response({"object": "list", "data": AliasSerializer(aliases, many=True).data})

    @extend_schema(
        operation_id="aliases_set",
        summary="Point an alias at an adapter version (creating it, or moving it: the rollback)",
        request=AliasSetSerializer,
        responses=AliasSerializer,
    )
    def post(self, request: Request) -> Response:
        params = AliasSetSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        team = request_team(request)
        adapter = adapter_get(team=team, name=params.validated_data["adapter"])
        alias = alias_set(team=team, name=params.validated_data["name"], adapter=adapter)
        return Response(AliasSerializer(alias).data)


class AliasDetailView(APIView):
    @extend_schema(
        operation_id="aliases_retrieve",
        summary="Retrieve an alias",
        parameters=[ALIAS_ID],
        responses=AliasSerializer,
    )
    def get(self, request: Request, model_id: str) -> Response:
        return Response(AliasSerializer(alias_get(team=request_team(request), model_id=model_id)).data)

    @extend_schema(
        operation_id="aliases_delete",
        summary="Delete an alias (the adapter version stays)",
        parameters=[ALIAS_ID],
        responses={204: OpenApiResponse(description="Deleted")},
    )
    def delete(self, request: Request, model_id: str) -> Response:
        alias_delete(alias=alias_get(team=request_team(request), model_id=model_id))
        return Response(status=204)


# Endpoints -----------------------------------------------------------------------------------------------


class EndpointListCreateView(APIView):
    @extend_schema(
        operation_id="endpoints_list",
        summary="The team's inference endpoints and the shared ones",
        responses=InferenceEndpointListSerializer,
    )
    def get(self, request: Request) -> Response:
        endpoints = endpoints_for_team(team=request_team(request)).order_by("name", "id")
        return Response({"object": "list", "data": InferenceEndpointSerializer(endpoints, many=True).data})

    @extend_schema(
        operation_id="endpoints_create",
        summary="Register an inference endpoint (vLLM or Ollama) of the team",
        request=InferenceEndpointCreateSerializer,
        responses={201: InferenceEndpointSerializer},
    )
    def post(self, request: Request) -> Response:
        params = InferenceEndpointCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        endpoint = endpoint_create(team=request_team(request), **params.validated_data)
        return Response(InferenceEndpointSerializer(endpoint).data, status=201)


class EndpointDetailView(APIView):
    @extend_schema(
        operation_id="endpoints_retrieve",
        summary="Retrieve an inference endpoint",
        parameters=[ENDPOINT_ID],
        responses=InferenceEndpointSerializer,
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        return Response(
            InferenceEndpointSerializer(
                endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
            ).data
        )

    @extend_schema(
        operation_id="endpoints_update",
        summary="Change a team endpoint's settings (shared endpoints: 403)",
        parameters=[ENDPOINT_ID],
        request=InferenceEndpointUpdateSerializer,
        responses=InferenceEndpointSerializer,
    )
    def patch(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _own_endpoint(request, endpoint_id)
        params = InferenceEndpointUpdateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        return Response(
            InferenceEndpointSerializer(endpoint_update(endpoint=endpoint, **params.validated_data)).data
        )

    @extend_schema(
        operation_id="endpoints_delete",
        summary="Remove a team endpoint that serves nothing any more (shared endpoints: 403)",
        parameters=[ENDPOINT_ID],
        responses={204: OpenApiResponse(description="Deleted"), 409: OpenApiResponse(description="In use")},
    )
    def delete(self, request: Request, endpoint_id: str) -> Response:
        endpoint_delete(endpoint=_own_endpoint(request, endpoint_id))
        return Response(status=204)


class EndpointCheckView(APIView):
    @extend_schema(
        operation_id="endpoints_check",
        summary="Check an endpoint's health now and return it",
        parameters=[ENDPOINT_ID],
        request=None,
        responses=InferenceEndpointSerializer,
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        endpoint = endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
        return Response(InferenceEndpointSerializer(endpoint_check_health(endpoint=endpoint)).data)


# Deployments ---------------------------------------------------------------------------------------------


class DeploymentListCreateView(APIView):
    @extend_schema(
        operation_id="deployments_list",
        summary="The team's deployments, newest first",
        parameters=[DeploymentListParamsSerializer],
        responses=DeploymentListSerializer,
    )
    def get(self, request: Request) -> Response:
        params = DeploymentListParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        team, query = request_team(request), params.validated_data
        rows = deployment_list(
            team=team,
            adapter=adapter_get(team=team, name=query["adapter"], include_deleted=True)
            if query.get("adapter")
            else None,
            endpoint=endpoint_get(team=team, endpoint_id=query["endpoint"])
            if query.get("endpoint")
            else None,
            status=query.get("status"),
        )
        after = None
        if query.get("after"):
            try:
                after = deployment_get(team=team, deployment_id=query["after"])
            except NotFound:
                raise NotFound(f"No deployment {query['after']!r} to page after", param="after") from None
        page = cursor_page(rows, after=after, limit=query["limit"], order="desc")
        return Response(page.as_payload(list(DeploymentSerializer(page.items, many=True).data)))

    @extend_schema(
        operation_id="deployments_create",
        summary="Deploy an adapter version to an endpoint (refused with every reason when incompatible)",
        request=DeploymentCreateSerializer,
        responses={201: DeploymentSerializer, 400: OpenApiResponse(description="incompatible_adapter")},
    )
    def post(self, request: Request) -> Response:
        params = DeploymentCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        team = request_team(request)
        deployment = deployment_create(
            team=team,
            adapter=adapter_get(team=team, name=params.validated_data["adapter"]),
            endpoint=endpoint_get(team=team, endpoint_id=params.validated_data["endpoint"]),
        )
        return Response(DeploymentSerializer(deployment).data, status=201)


class DeploymentDetailView(APIView):
    @extend_schema(
        operation_id="deployments_retrieve",
        summary="Retrieve a deployment",
        parameters=[DEPLOYMENT_ID],
        responses=DeploymentSerializer,
    )
    def get(self, request: Request, deployment_id: str) -> Response:
        return Response(
            DeploymentSerializer(deployment_get(team=request_team(request), deployment_id=deployment_id)).data
        )

    @extend_schema(
        operation_id="deployments_delete",
        summary="Undeploy: the adapter is unloaded from the endpoint in the background",
        parameters=[DEPLOYMENT_ID],
        responses={202: DeploymentSerializer},
    )
    def delete(self, request: Request, deployment_id: str) -> Response:
        return _undeploy(request, deployment_id)


class DeploymentUndeployView(APIView):
    @extend_schema(
        operation_id="deployments_undeploy",
        summary="Undeploy: the adapter is unloaded from the endpoint in the background",
        parameters=[DEPLOYMENT_ID],
        request=None,
        responses={202: DeploymentSerializer},
    )
    def post(self, request: Request, deployment_id: str) -> Response:
        return _undeploy(request, deployment_id)


def _undeploy(request: Request, deployment_id: str) -> Response:
    deployment = deployment_get(team=request_team(request), deployment_id=deployment_id)
    return Response(DeploymentSerializer(deployment_undeploy(deployment=deployment)).data, status=202)


# Auto-deploy policies ------------------------------------------------------------------------------------


class PolicyListCreateView(APIView):
    @extend_schema(
        operation_id="deploy_policies_list",
        summary="The team's auto-deploy policies",
        responses=PolicyListSerializer,
    )
    def get(self, request: Request) -> Response:
        policies = policy_list(team=request_team(request))
        return Response({"object": "list", "data": PolicySerializer(policies, many=True).data})

    @extend_schema(
        operation_id="deploy_policies_create",
        summary="Deploy the team's new adapters (of one base model, or all) to an endpoint when their job "
        "succeeds",
        request=PolicyCreateSerializer,
        responses={201: PolicySerializer},
    )
    def post(self, request: Request) -> Response:
        params = PolicyCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        team = request_team(request)
        endpoint = endpoint_get(team=team, endpoint_id=params.validated_data["endpoint"])
        base_name = params.validated_data.get("base_model")
        base_model = None
        if base_name:
            try:
                base_model = base_model_for_team(team=team, name=base_name)
            except InvalidRequest as exc:
                raise InvalidRequest(exc.message, param="base_model", code=exc.code) from None
        policy = policy_create(team=team, endpoint=endpoint, base_model=base_model)
        return Response(PolicySerializer(policy).data, status=201)


class PolicyDetailView(APIView):
    @extend_schema(
        operation_id="deploy_policies_retrieve",
        summary="Retrieve an auto-deploy policy",
        parameters=[POLICY_ID],
        responses=PolicySerializer,
    )
    def get(self, request: Request, policy_id: str) -> Response:
        return Response(PolicySerializer(policy_get(team=request_team(request), policy_id=policy_id)).data)

    @extend_schema(
        operation_id="deploy_policies_delete",
        summary="Delete an auto-deploy policy (deployments it made stay)",
        parameters=[POLICY_ID],
        responses={204: OpenApiResponse(description="Deleted")},
    )
    def delete(self, request: Request, policy_id: str) -> Response:
        policy_delete(policy=policy_get(team=request_team(request), policy_id=policy_id))
        return Response(status=204)
