"""The endpoint agent's tasks: `tailor.agent.deploy` and `tailor.agent.undeploy` (see workers.agent).

Each receives an order from the control plane (deployment id and attempt, the served name, the adapter's
object-store prefix and its files with digests, the folder name) and answers with one
`tailor.control.deployment_pushed` report. Both are idempotent: the folder is kept when its digests
match, vLLM's `load_inplace` replaces an adapter already loaded under the name, and unloading an unknown
name is not an error.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from gpu_runner.endpoints.delivery import materialize, remove
from gpu_runner.endpoints.errors import EndpointError
from gpu_runner.endpoints.vllm import VLLMClient
from gpu_runner.storage import ObjectStore, open_store
from workers.app import AGENT_DEPLOY_TASK, AGENT_UNDEPLOY_TASK, DEPLOYMENT_PUSHED_TASK, app, control_queue

logger = logging.getLogger(__name__)


def _home() -> Path:
    return Path(os.environ.get("TAILOR_HOME", "var")).expanduser().resolve()


@functools.lru_cache(maxsize=4)
def _store_for(url: str) -> ObjectStore:
    return open_store(url)


def object_store() -> ObjectStore:
    return _store_for(os.environ.get("TAILOR_STORAGE_URL") or (_home() / "objects").as_uri())


def adapter_dir() -> Path:
    return Path(os.environ.get("TAILOR_AGENT_ADAPTER_DIR") or (_home() / "adapters")).expanduser().resolve()


def server() -> VLLMClient:
    return VLLMClient(
        os.environ.get("TAILOR_AGENT_API_URL", "http://127.0.0.1:8000"),
        api_key=os.environ.get("TAILOR_AGENT_API_KEY") or None,
        timeout=float(os.environ.get("TAILOR_ENDPOINT_TIMEOUT", "60")),
    )


def _report(order: dict[str, Any], *, action: str, error: EndpointError | None) -> None:
    payload = None
    if error is not None:
        payload = {
            "message": str(error),
            "transient": error.transient,
            "status": error.status,
            "reason_code": error.reason_code,
        }
    app.send_task(
        DEPLOYMENT_PUSHED_TASK,
        kwargs={
            "deployment_id": order["deployment_id"],
            "attempt": int(order["attempt"]),
            "action": action,
            "error": payload,
        },
        queue=control_queue(),
    )


@app.task(
    name=AGENT_DEPLOY_TASK, ignore_result=True, acks_late=True, reject_on_worker_lost=True, time_limit=1800
)
def deploy(order: dict[str, Any]) -> None:
    """Download, verify and load one adapter; report the outcome."""
    try:
        root = adapter_dir()
        path = materialize(
            store=object_store(),
            prefix=str(order["prefix"]),
            files=dict(order["files"]),
            dest_root=root,
            dir_name=str(order["dir_name"]),
        )
        server().load(str(order["lora_name"]), str(path), load_inplace=True)
    except EndpointError as exc:
        logger.warning("deploy %s failed: %s", order.get("deployment_id"), exc)
        _report(order, action="deploy", error=exc)
        return
    except Exception as exc:  # noqa: BLE001 - anything else (object store down, disk full) is reported
        logger.exception("deploy %s failed", order.get("deployment_id"))
        _report(
            order,
            action="deploy",
            error=EndpointError(
                f"the endpoint agent failed: {exc}", transient=True, status=None, reason_code="agent_error"
            ),
        )
        return
    logger.info("loaded %s from %s", order["lora_name"], path)
    _report(order, action="deploy", error=None)


@app.task(
    name=AGENT_UNDEPLOY_TASK, ignore_result=True, acks_late=True, reject_on_worker_lost=True, time_limit=600
)
def undeploy(order: dict[str, Any]) -> None:
    """Unload one adapter and remove its folder; report."""
    try:
        server().unload(str(order["lora_name"]))
        remove(adapter_dir(), str(order["dir_name"]))
    except EndpointError as exc:
        _report(order, action="undeploy", error=exc)
        return
    _report(order, action="undeploy", error=None)
