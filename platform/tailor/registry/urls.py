"""Routes of the registry's native API. Adapter names (`ft:<base>:<team>:<suffix>:<job>`) hold colons, and
slashes where the base model's name has one (`org/Model-1B`), so they are matched as paths; the routes with
a suffix come first."""

from __future__ import annotations

from django.urls import path

from tailor.registry.views import (
    AdapterDetailView,
    AdapterDownloadView,
    AdapterFileView,
    AdapterListView,
    AliasDetailView,
    AliasListCreateView,
    DeploymentDetailView,
    DeploymentListCreateView,
    DeploymentUndeployView,
    EndpointCheckView,
    EndpointDetailView,
    EndpointListCreateView,
    PolicyDetailView,
    PolicyListCreateView,
)

native_urlpatterns = [
    path("adapters", AdapterListView.as_view(), name="adapters"),
    path("adapters/<path:name>/files/<str:filename>", AdapterFileView.as_view(), name="adapter-file"),
    path("adapters/<path:name>/download", AdapterDownloadView.as_view(), name="adapter-download"),
    path("adapters/<path:name>", AdapterDetailView.as_view(), name="adapter"),
    path("aliases", AliasListCreateView.as_view(), name="aliases"),
    path("aliases/<path:model_id>", AliasDetailView.as_view(), name="alias"),
    path("endpoints", EndpointListCreateView.as_view(), name="endpoints"),
    path("endpoints/<str:endpoint_id>", EndpointDetailView.as_view(), name="endpoint"),
    path("endpoints/<str:endpoint_id>/check", EndpointCheckView.as_view(), name="endpoint-check"),
    path("deployments", DeploymentListCreateView.as_view(), name="deployments"),
    path("deployments/<str:deployment_id>", DeploymentDetailView.as_view(), name="deployment"),
    path(
        "deployments/<str:deployment_id>/undeploy",
        DeploymentUndeployView.as_view(),
        name="deployment-undeploy",
    ),
    path("deploy_policies", PolicyListCreateView.as_view(), name="deploy-policies"),
    path("deploy_policies/<str:policy_id>", PolicyDetailView.as_view(), name="deploy-policy"),
]
