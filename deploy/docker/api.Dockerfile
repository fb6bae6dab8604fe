# Control-plane image (API server, control worker, beat): no torch stack, non-root, slim.
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY platform ./platform
COPY workers ./workers
COPY gpu_runner ./gpu_runner
RUN python -m venv /opt/tailor && /opt/tailor/bin/pip install .

FROM python:3.11.11-slim-bookworm
RUN useradd --create-home --uid 10001 tailor
COPY --from=build /opt/tailor /opt/tailor
ENV PATH=/opt/tailor/bin:$PATH PYTHONUNBUFFERED=1 TAILOR_HOME=/var/lib/tailor
RUN mkdir -p /var/lib/tailor && chown tailor /var/lib/tailor
USER tailor
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["gunicorn", "tailor.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "4", "--timeout", "600"]
