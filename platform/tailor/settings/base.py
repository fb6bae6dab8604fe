"""Django, DRF and OpenAPI settings that do not depend on an external service."""

from __future__ import annotations

from tailor.settings.env import PRODUCTION, TAILOR_HOME, env

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "tailor.core",
    "tailor.teams",
    "tailor.files",
    "tailor.tuning",
    "tailor.webhooks",
    "tailor.registry",
    "tailor.web",
]

# LOGGING is in tailor.settings.observability.
MIDDLEWARE = [
    # First, so every later middleware's log lines carry the request id and every response is measured.
    "tailor.core.middleware.RequestContextMiddleware",
    "tailor.core.middleware.RequestMetricsMiddleware",
    # Probes and scrapes reach pods by IP over plain HTTP: answered before the host check and redirect.
    "tailor.core.middleware.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tailor.urls"
WSGI_APPLICATION = "tailor.wsgi.application"
ASGI_APPLICATION = "tailor.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = "static/"
# Production runs `tailor collectstatic` into STATIC_ROOT and WhiteNoise serves it from there;
# development serves the admin's assets straight from the installed apps.
STATIC_ROOT = (
    env.str("DJANGO_STATIC_ROOT", default=str(TAILOR_HOME / "static"))
    if PRODUCTION or "DJANGO_STATIC_ROOT" in env.ENVIRON
    else None
)
WHITENOISE_USE_FINDERS = not PRODUCTION

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tailor.core.authentication.APIKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tailor.core.permissions.HasKeyScope"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "EXCEPTION_HANDLER": "tailor.core.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Tailor API",
    "DESCRIPTION": (
        "Self-hosted fine-tuning platform. The `/v1` surface is compatible with the official `openai` "
        'SDK (`OpenAI(base_url=".../v1", api_key=...)`); `/api/v1` holds Tailor\'s native additions.'
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/(v1|api/v1)",
    # Every `object` constant and `status` choice set gets its own name in the document.
    "ENUM_NAME_OVERRIDES": {
        "ListObjectEnum": ["list"],
        "FileObjectEnum": ["file"],
        "FineTuningJobObjectEnum": ["fine_tuning.job"],
        "FineTuningJobEventObjectEnum": ["fine_tuning.job.event"],
        "FineTuningJobCheckpointObjectEnum": ["fine_tuning.job.checkpoint"],
        "ModelObjectEnum": ["model"],
        "WebhookEndpointObjectEnum": ["webhook_endpoint"],
        "WebhookDeliveryObjectEnum": ["webhook_delivery"],
        "FileValidationReportObjectEnum": ["file.validation_report"],
        "FileStatusEnum": "tailor.files.models.File.Status",
        "FineTuningJobStatusEnum": [
            "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
        ],
        "WebhookDeliveryStatusEnum": "tailor.webhooks.models.WebhookDelivery.Status",
        "DeploymentStatusEnum": "tailor.registry.models.Deployment.Status",
    },
}

__all__ = [
    "INSTALLED_APPS",
    "MIDDLEWARE",
    "ROOT_URLCONF",
    "WSGI_APPLICATION",
    "ASGI_APPLICATION",
    "TEMPLATES",
    "AUTH_PASSWORD_VALIDATORS",
    "LANGUAGE_CODE",
    "TIME_ZONE",
    "USE_I18N",
    "USE_TZ",
    "DEFAULT_AUTO_FIELD",
    "STATIC_URL",
    "STATIC_ROOT",
    "WHITENOISE_USE_FINDERS",
    "REST_FRAMEWORK",
    "SPECTACULAR_SETTINGS",
]
