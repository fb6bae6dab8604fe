"""Top-level routes: the OpenAI-compatible API under /v1, Tailor's native API under /api/v1, the OpenAPI
document, the web admin, the liveness and readiness probes and the Prometheus scrape. Unknown URLs under
the API prefixes answer in the error envelope rather than with an HTML page."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from tailor.core.views import healthz, metrics, readyz, unknown_api_url
from tailor.files.urls import native_urlpatterns as files_native
from tailor.files.urls import openai_urlpatterns as files_openai
from tailor.gateway.urls import openai_urlpatterns as gateway_openai
from tailor.registry.urls import native_urlpatterns as registry_native
from tailor.tuning.urls import openai_urlpatterns as tuning_openai
from tailor.webhooks.urls import native_urlpatterns as webhooks_native

openai_api = [*files_openai, *tuning_openai, *gateway_openai, re_path(r"^(?P<path>.*)$", unknown_api_url)]
native_api = [*files_native, *webhooks_native, *registry_native, re_path(r"^(?P<path>.*)$", unknown_api_url)]

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="openapi-schema"),
    path("admin/", admin.site.urls),
    path("dashboard/", include("tailor.web.urls")),
    path("v1/", include((openai_api, "openai"))),
    re_path(r"^v1$", unknown_api_url),
    path("api/v1/", include((native_api, "native"))),
    re_path(r"^api/(?P<path>.*)$", unknown_api_url),
]
