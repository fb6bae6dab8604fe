"""Tailor's native webhooks API: a team registers URLs for its job events and reads the delivery log."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tailor.core.authentication import request_team
from tailor.webhooks.selectors import delivery_list, endpoint_get, endpoint_list
from tailor.webhooks.serializers import (
    DeliveryListParamsSerializer,
    DeliveryListSerializer,
    DeliverySerializer,
    EndpointCreateSerializer,
    EndpointListSerializer,
    EndpointSerializer,
    EndpointUpdateSerializer,
    EndpointWithSecretSerializer,
)
from tailor.webhooks.services import endpoint_create, endpoint_delete, endpoint_rotate_secret, endpoint_update

ENDPOINT_ID = OpenApiParameter("endpoint_id", OpenApiTypes.STR, OpenApiParameter.PATH)


class EndpointListCreateView(APIView):
    @extend_schema(
        operation_id="webhooks_list", summary="List webhook endpoints", responses=EndpointListSerializer
    )
    def get(self, request: Request) -> Response:
        data = EndpointSerializer(endpoint_list(team=request_team(request)), many=True).data
        return Response({"object": "list", "data": data})

    @extend_schema(
        operation_id="webhooks_create",
        summary="Register a webhook endpoint (the answer holds its secret, shown once)",
        request=EndpointCreateSerializer,
        responses=EndpointWithSecretSerializer,
    )
    def post(self, request: Request) -> Response:
        params = EndpointCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        endpoint = endpoint_create(team=request_team(request), **params.validated_data)
        return Response(EndpointWithSecretSerializer(endpoint).data)


class EndpointDetailView(APIView):
    @extend_schema(
        operation_id="webhooks_retrieve",
        summary="Retrieve a webhook endpoint",
        parameters=[ENDPOINT_ID],
        responses=EndpointSerializer,
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        return Response(
            EndpointSerializer(endpoint_get(team=request_team(request), endpoint_id=endpoint_id)).data
        )

    @extend_schema(
        operation_id="webhooks_update",
        summary="Change a webhook endpoint's URL, description, event types or enabled flag",
        parameters=[ENDPOINT_ID],
        request=EndpointUpdateSerializer,
        responses=EndpointSerializer,
    )
    def patch(self, request: Request, endpoint_id: str) -> Response:
        endpoint = endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
        params = EndpointUpdateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        return Response(EndpointSerializer(endpoint_update(endpoint=endpoint, **params.validated_data)).data)

    @extend_schema(
        operation_id="webhooks_delete",
        summary="Delete a webhook endpoint and its delivery log",
        parameters=[ENDPOINT_ID],
        responses={204: OpenApiResponse(description="Deleted")},
    )
    def delete(self, request: Request, endpoint_id: str) -> Response:
        endpoint_delete(endpoint=endpoint_get(team=request_team(request), endpoint_id=endpoint_id))
        return Response(status=204)


class EndpointRotateSecretView(APIView):
    @extend_schema(
        operation_id="webhooks_rotate_secret",
        summary="Replace an endpoint's signing secret (the new one is shown once)",
        parameters=[ENDPOINT_ID],
        request=None,
        responses=EndpointWithSecretSerializer,
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        endpoint = endpoint_rotate_secret(
            endpoint=endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
        )
        return Response(EndpointWithSecretSerializer(endpoint).data)


class DeliveryListView(APIView):
    @extend_schema(
        operation_id="webhooks_deliveries",
        summary="An endpoint's delivery log, newest first",
        parameters=[ENDPOINT_ID, DeliveryListParamsSerializer],
        responses=DeliveryListSerializer,
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        params = DeliveryListParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        endpoint = endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
        page = delivery_list(endpoint=endpoint, **params.validated_data)
        return Response(page.as_payload(list(DeliverySerializer(page.items, many=True).data)))
