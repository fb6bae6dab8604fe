"""Routes of the Files API, without trailing slashes: the openai SDK sends none."""

from __future__ import annotations

from django.urls import path

from tailor.files.views import FileContentView, FileDetailView, FileListCreateView, FileReportView

openai_urlpatterns = [
    path("files", FileListCreateView.as_view(), name="files"),
    path("files/<str:file_id>", FileDetailView.as_view(), name="file-detail"),
    path("files/<str:file_id>/content", FileContentView.as_view(), name="file-content"),
]

native_urlpatterns = [
    path("files/<str:file_id>/report", FileReportView.as_view(), name="file-report"),
]
