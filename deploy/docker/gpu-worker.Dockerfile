# syntax=docker/dockerfile:1
# Data-plane image: the GPU worker (`tailor worker gpu`), the endpoint agent beside a vLLM server
# (`tailor worker agent`) and the development inference server (`tailor serve`). It holds the `[train]`
# extra (torch, transformers, peft, trl, bitsandbytes) and no database credentials.
#
#   docker build -f deploy/docker/gpu-worker.Dockerfile -t tailor-gpu-worker:0.1.0 .
#   CPU only:  --build-arg BASE_IMAGE=ubuntu:22.04 --build-arg TORCH_VARIANT=cpu
#
# torch comes from the PyTorch index as the build of TORCH_VARIANT (cu126: CUDA 12.6, NVIDIA driver 560
# or newer; cu130 for CUDA 13 hosts, cpu for machines without a GPU). Its CUDA libraries ship inside the
# wheel, so the CUDA base image only has to match the driver the container toolkit checks against.
ARG BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu22.04
FROM ${BASE_IMAGE}
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cu126
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/tailor/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    TAILOR_HOME=/var/lib/tailor HF_HOME=/var/lib/tailor/hf
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/tailor \
    && pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}"
WORKDIR /src
# Dependencies first, from pyproject.toml alone (with empty package folders), so that a change to the code
# does not reinstall the torch stack; the code itself follows without dependencies. (DL3013 asks for
# `pkg==version`: the versions are pyproject.toml's ranges, and torch is pinned above.)
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir -p platform/tailor workers gpu_runner \
    && pip install ".[train]" \
    && pip uninstall --yes tailor
COPY platform ./platform
COPY workers ./workers
COPY gpu_runner ./gpu_runner
COPY --chmod=755 deploy/docker/healthcheck.py /opt/tailor/bin/tailor-healthcheck
# The model cache, the agent's adapter folder and the development server's models exist owned by the
# runtime user, so that named volumes mounted there start with that owner.
RUN pip install --no-deps . \
    && rm -rf /src/* \
    && groupadd --gid 10001 tailor \
    && useradd --create-home --uid 10001 --gid 10001 tailor \
    && mkdir -p /var/lib/tailor/cache /var/lib/tailor/adapters /var/lib/tailor/hf /var/lib/tailor/models \
    && chown -R tailor:tailor /var/lib/tailor
USER 10001:10001
WORKDIR /var/lib/tailor
# A GPU worker's health is its Celery node answering a ping through the broker (see healthcheck.py); the
# class comes from TAILOR_GPU_CLASS as for `tailor worker gpu` itself. Compose and Kubernetes set their own
# checks for the agent and `tailor serve`.
HEALTHCHECK --interval=60s --timeout=15s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "exec tailor-healthcheck celery \"gpu-${TAILOR_GPU_CLASS:-default}\""]
CMD ["tailor", "worker", "gpu"]
