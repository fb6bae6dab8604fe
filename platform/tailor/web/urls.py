"""The dashboard's routes, mounted at /dashboard/ (namespace `web`)."""

from __future__ import annotations

from django.contrib.auth.views import LogoutView
from django.urls import path

from tailor.web import views

app_name = "web"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.DashboardLoginView.as_view(), name="login"),
    path("logout/", LogoutView.as_view(next_page="web:login"), name="logout"),
    path("t/<slug:slug>/", views.overview, name="overview"),
    path("t/<slug:slug>/jobs/", views.job_list, name="job_list"),
    path("t/<slug:slug>/jobs/<str:job_id>/", views.job_detail, name="job_detail"),
    path("t/<slug:slug>/jobs/<str:job_id>/metrics.json", views.job_metrics_json, name="job_metrics"),
    path("t/<slug:slug>/jobs/<str:job_id>/<slug:action>/", views.job_action, name="job_action"),
    path("t/<slug:slug>/keys/", views.api_keys, name="api_keys"),
    path("t/<slug:slug>/keys/<int:key_id>/revoke/", views.api_key_revoke_view, name="api_key_revoke"),
]
