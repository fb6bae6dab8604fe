"""Files API views, thin: parse input, call one service or selector, serialize the result.

`/v1/files…` is the OpenAI-compatible surface the openai SDK calls; `/api/v1/files/{id}/report` is
Tailor's native addition with the full validation report.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tailor.core.authentication import request_team
from tailor.core.errors import InvalidRequest, PayloadTooLarge
from tailor.core.objectstore import object_store
from tailor.files.models import new_file_id
from tailor.files.selectors import file_get, file_list, file_open_content, file_storage_key
from tailor.files.serializers import (
    FileCreateParamsSerializer,
    FileDeletedSerializer,
    FileListParamsSerializer,
    FileListSerializer,
    FileObjectSerializer,
    FileReportSerializer,
    FileUploadFormSerializer,
)
from tailor.files.services import file_create, file_delete
from tailor.files.uploads import MULTIPART_OVERHEAD, ObjectStoreUploadHandler, StoredUpload

STREAM_CHUNK = 256 * 1024


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"File is larger than the maximum upload size of {limit:,} bytes (TAILOR_MAX_UPLOAD_BYTES).",
        param="file",
    )


class FileListCreateView(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        operation_id="files_list",
        summary="List files",
        parameters=[FileListParamsSerializer],
        responses=FileListSerializer,
    )
    def get(self, request: Request) -> Response:
        params = FileListParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        page = file_list(team=request_team(request), **params.validated_data)
        data = FileObjectSerializer(page.items, many=True).data
        return Response(page.as_payload(list(data)))

    @extend_schema(
        operation_id="files_create",
        summary="Upload a file",
        request={"multipart/form-data": FileUploadFormSerializer},
        responses={200: FileObjectSerializer, 413: OpenApiResponse(description="File too large")},
    )
    def post(self, request: Request) -> Response:
        team = request_team(request)
        limit = settings.TAILOR_MAX_UPLOAD_BYTES
        # Refuse an obviously oversized body before reading any of it.
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit + MULTIPART_OVERHEAD:
            raise _too_large(limit)
        file_id = new_file_id()
        handler = ObjectStoreUploadHandler(
            request._request,
            store=object_store(),
            key=file_storage_key(team=team, file_id=file_id),
            max_bytes=limit,
        )
        # Must be set before the body is parsed; DRF's MultiPartParser reads the Django request's handlers.
        request._request.upload_handlers = [handler]
        try:
            form, files = request.data, request.FILES
            if handler.too_large:
                raise _too_large(limit)
            upload = files.get("file")
            if not isinstance(upload, StoredUpload):
                raise InvalidRequest(
                    "Missing required parameter: 'file' (a multipart file part with a filename).",
                    param="file",
                    code="missing_required_parameter",
                )
            params = FileCreateParamsSerializer.from_form(form)
            params.is_valid(raise_exception=True)
            expires = params.validated_data.get("expires_after")
            file = file_create(
                team=team,
                file_id=file_id,
                purpose=params.validated_data["purpose"],
                filename=upload.name or "upload",
                content_type=upload.content_type or "",
                stored=upload.stored,
                expires_after_seconds=expires["seconds"] if expires else None,
                uploaded_with=request.auth,
            )
        except BaseException:
            handler.discard()
            raise
        return Response(FileObjectSerializer(file).data)


class FileDetailView(APIView):
    @extend_schema(operation_id="files_retrieve", summary="Retrieve a file", responses=FileObjectSerializer)
    def get(self, request: Request, file_id: str) -> Response:
        return Response(FileObjectSerializer(file_get(team=request_team(request), file_id=file_id)).data)

    @extend_schema(operation_id="files_delete", summary="Delete a file", responses=FileDeletedSerializer)
    def delete(self, request: Request, file_id: str) -> Response:
        file = file_delete(file=file_get(team=request_team(request), file_id=file_id))
        return Response(FileDeletedSerializer({"id": file.public_id, "deleted": True}).data)


class FileContentView(APIView):
    @extend_schema(
        operation_id="files_content",
        summary="Download a file's content",
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )
    def get(self, request: Request, file_id: str) -> StreamingHttpResponse:
        file = file_get(team=request_team(request), file_id=file_id)
        stream = file_open_content(file=file)
        response = StreamingHttpResponse(_iter_chunks(stream), content_type="application/octet-stream")
        response["Content-Length"] = str(file.bytes)
        response["Content-Disposition"] = _attachment(file.filename)
        return response

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # The SDK asks for `Accept: application/binary`; the body is raw bytes whatever was asked,
        # and errors still render as the JSON envelope.
        return super().perform_content_negotiation(request, force=True)


class FileReportView(APIView):
    @extend_schema(
        operation_id="files_report", summary="A file's full validation report", responses=FileReportSerializer
    )
    def get(self, request: Request, file_id: str) -> Response:
        return Response(FileReportSerializer(file_get(team=request_team(request), file_id=file_id)).data)


def _iter_chunks(stream: Any) -> Any:
    try:
        while chunk := stream.read(STREAM_CHUNK):
            yield chunk
    finally:
        stream.close()


def _attachment(filename: str) -> str:
    return content_disposition_header(as_attachment=True, filename=filename) or "attachment"
