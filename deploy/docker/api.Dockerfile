# syntax=docker/dockerfile:1
# Control-plane image: the API (gunicorn), the control worker, beat and one-shot commands (migrate,
# createteam, endpoint sync). No torch stack: GPU nodes run gpu-worker.Dockerfile.
#
#   docker build -f deploy/docker/api.Dockerfile -t tailor-api:0.1.0 .     (from the repository root)

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY platform ./platform
COPY workers ./workers
COPY gpu_runner ./gpu_runner
# Tailor and every dependency as wheels: the runtime stage installs them with no compiler and no network.
RUN pip wheel --wheel-dir /wheels .


FROM python:3.11.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/tailor/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    TAILOR_HOME=/var/lib/tailor DJANGO_STATIC_ROOT=/opt/tailor/static
# The wheels are bind-mounted from the build stage, so none of them stays in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/tailor \
    && /opt/tailor/bin/pip install --no-index --find-links /wheels /wheels/tailor-*.whl
COPY --chmod=755 deploy/docker/healthcheck.py /opt/tailor/bin/tailor-healthcheck
# The admin's assets, collected once at build time; WhiteNoise serves them. Production settings refuse to
# load without a secret key, so this one command gets a random key that no running container ever sees.
# /var/lib/tailor/adapters exists owned by the runtime user so that a named volume mounted there (the
# registry's shared adapter folder) starts with that owner and the control worker can write into it.
RUN TAILOR_ENV=production DJANGO_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    tailor collectstatic --noinput --verbosity 0 \
    && groupadd --gid 10001 tailor \
    && useradd --create-home --uid 10001 --gid 10001 tailor \
    && mkdir -p /var/lib/tailor/adapters \
    && chown -R tailor:tailor /var/lib/tailor
USER 10001:10001
WORKDIR /var/lib/tailor
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD ["tailor-healthcheck", "http", "http://127.0.0.1:8000/healthz"]
CMD ["gunicorn", "tailor.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "4", \
     "--timeout", "600", "--access-logfile", "-"]
