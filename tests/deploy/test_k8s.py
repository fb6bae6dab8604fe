"""The Kubernetes manifests keep their promises: every overlay of deploy/k8s renders with kustomize, every
object validates against the Kubernetes API schemas (built-in kinds, strict: unknown fields are errors)
or KEDA's CRD schemas (ScaledObject, TriggerAuthentication), and the rendered output holds what operators
rely on — resources and probes on every container, non-root pods, no secret values, one KEDA-scaled GPU
pool per GPU class of TAILOR_GPU_CLASSES that consumes the queue KEDA watches, a single beat, pinned
images, and a vLLM server whose endpoint agent matches its TAILOR_ENDPOINTS entry.

No cluster is needed: `kubectl kustomize` (or `kustomize build`) renders, `kubernetes-validate` holds the
Kubernetes schemas, and KEDA's CRDs are vendored under deploy/k8s/schemas/. The last two tests ask the real
Redis and PostgreSQL what KEDA's scalers will read: the queue's list, and the count of occupied jobs.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from django.db import connection
from django.utils import timezone
from tailor.teams.models import Team
from tailor.tuning.models import FineTuningJob
from tailor.tuning.scheduler import OCCUPYING

from gpu_runner.memory import parse_gpu_classes
from tests.tailor.jobs_factories import create_job
from tests.tailor.processes import delete_queue
from workers.app import RUN_JOB_TASK, agent_queue
from workers.app import app as celery_app
from workers.gpu import worker_argv

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(path.parent.name for path in (K8S / "overlays").glob("*/kustomization.yaml"))
SECRETS_DIR = K8S / "secrets"
# The oldest Kubernetes these manifests support: what KEDA 2.17 supports, and what kubernetes-validate bundles.
KUBERNETES_VERSION = "1.30.0"
KEDA_VERSION = "v2.17.3"
KEDA_SCHEMAS = K8S / "schemas" / f"keda-{KEDA_VERSION}"
KEDA_CRDS = {
    "ScaledObject": "keda.sh_scaledobjects.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
}
# Trigger metadata and authentication parameters of the scalers used, from KEDA v2.17.3's
# pkg/scalers/redis_scaler.go and postgresql_scaler.go. Trigger metadata is a free-form map in the CRD, so a
# misspelt key (`listname`) would pass the schema and be ignored by KEDA; these lists catch it.
SCALER_METADATA = {
    "redis": {
        "required": {"address", "listName", "listLength", "databaseIndex"},
        "allowed": {
            "address",
            "listName",
            "listLength",
            "activationListLength",
            "databaseIndex",
            "enableTLS",
            "unsafeSsl",
            "username",
        },
        "auth": {"password", "username", "tls", "ca", "cert", "key", "keyPassword"},
    },
    "postgresql": {
        "required": {"query", "targetQueryValue"},
        "allowed": {"query", "targetQueryValue", "activationTargetQueryValue"},
        "auth": {"connection", "password"},
    },
}
# The one container whose root filesystem stays writable, and why (see its manifest).
WRITABLE_ROOT = {("tailor-vllm", "vllm"): "vLLM, torch.compile and Triton write caches to fixed paths"}
TAILOR_IMAGES = ("ghcr.io/tailor/api", "ghcr.io/tailor/gpu-worker")
GPU_RESOURCE = "nvidia.com/gpu"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|(^|_)KEY$|PRIVATE", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^/@\s:]*:([^@/\s]*)@")
KUBELET_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


# Rendering --------------------------------------------------------------------------------------------


def _kustomize_command() -> list[str]:
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    pytest.skip("neither kubectl nor kustomize is on PATH; install kubectl to render deploy/k8s")


def render(path: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize path` renders."""
    done = subprocess.run(
        [*_kustomize_command(), str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"kustomize could not render {path}:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / "overlays" / overlay))


def rendered(overlay: str) -> list[dict[str, Any]]:
    """A private copy of the overlay's objects, rendered once per test session."""
    return copy.deepcopy(list(_rendered(overlay)))


# Reading the objects ----------------------------------------------------------------------------------


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in objects(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, its pod template) for every object that runs pods."""
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            yield doc, doc["spec"]["template"]


def containers(pod_spec: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    return [*(pod_spec.get("initContainers", []) if init else []), *pod_spec["containers"]]


def config_map(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    """The data of the ConfigMap generated as `name` (kustomize appends a content hash)."""
    pattern = re.compile(rf"^{re.escape(name)}(-[a-z0-9]{{10}})?$")
    found = [doc for doc in objects(docs, "ConfigMap") if pattern.match(doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one ConfigMap {name}, found {[d['metadata']['name'] for d in found]}"
    return dict(found[0].get("data", {}))


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment the kubelet gives `container`: envFrom first, then env in order with `$(VAR)`
    expanded as the kubelet expands it. A Secret's value is a placeholder, `secret.NAME.KEY`."""
    configs = {doc["metadata"]["name"]: doc.get("data", {}) for doc in objects(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in configs, (
                f"container {container['name']} reads ConfigMap {name}, which is not rendered"
            )
            env.update(configs[name])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = KUBELET_REFERENCE.sub(
                lambda match: env.get(match.group(1), match.group(0)), var["value"]
            )
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = f"secret.{ref['name']}.{ref['key']}"
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = configs[ref["name"]][ref["key"]]
    return env


def gpu_pools(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Deployments that run `tailor worker gpu`."""
    return [
        doc
        for doc in objects(docs, "Deployment")
        if any(
            c.get("command", [])[:3] == ["tailor", "worker", "gpu"]
            for c in doc["spec"]["template"]["spec"]["containers"]
        )
    ]


def option(argv: list[str], flag: str) -> str | None:
    """The value of `flag` in argv (`--flag value` or `--flag=value`)."""
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None


def scaled_objects_for(docs: list[dict[str, Any]], deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        so
        for so in objects(docs, "ScaledObject")
        if so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        and so["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    ]


def gpu_pool_problems(docs: list[dict[str, Any]]) -> list[str]:
    """What is wrong between TAILOR_GPU_CLASSES, the GPU worker Deployments and their ScaledObjects; empty
    when every class has one pool that consumes the class's queue, KEDA watches that queue, and the pool
    asks for the class's GPUs."""
    problems: list[str] = []
    config = config_map(docs, "tailor-config")
    classes = {gpu_class.name: gpu_class for gpu_class in parse_gpu_classes(config["TAILOR_GPU_CLASSES"])}
    slots = dict(
        (name, int(count))
        for name, _, count in (
            part.partition(":") for part in config.get("TAILOR_GPU_CLASS_SLOTS", "").split(",")
        )
        if name
    )
    redis_service = one(docs, "Service", "tailor-redis")
    redis_address = (
        f"tailor-redis.{redis_service['metadata']['namespace']}.svc.cluster.local:"
        f"{redis_service['spec']['ports'][0]['port']}"
    )
    served: dict[str, str] = {}
    for deployment in gpu_pools(docs):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]
        (worker,) = [
            c for c in pod["spec"]["containers"] if c.get("command", [])[:3] == ["tailor", "worker", "gpu"]
        ]
        env = container_env(docs, worker)
        gpu_class_name = option(worker["command"], "--gpu-class")
        if gpu_class_name not in classes:
            problems.append(
                f"{name}: --gpu-class {gpu_class_name} is not in TAILOR_GPU_CLASSES {sorted(classes)}"
            )
            continue
        gpu_class = classes[gpu_class_name]
        if gpu_class_name in served:
            problems.append(f"{name}: class {gpu_class_name} already has the pool {served[gpu_class_name]}")
        served[gpu_class_name] = name
        # The queue the real worker would consume, from the worker's own command-line parser.
        celery_argv = worker_argv(
            worker["command"][3:], environ=env, broker_url=env.get("CELERY_BROKER_URL", "")
        )
        queue = option(celery_argv, "--queues")
        if queue != gpu_class.queue:
            problems.append(
                f"{name}: consumes {queue}, but jobs of class {gpu_class_name} go to {gpu_class.queue}"
            )
        # Its liveness probe pings the Celery node the worker names itself.
        node = (option(celery_argv, "--hostname") or "").partition("@")[0]
        probe = worker.get("livenessProbe", {}).get("exec", {}).get("command")
        if probe != ["tailor-healthcheck", "celery", node]:
            problems.append(f"{name}: liveness probe {probe} does not ping the worker's node {node}")
        if pod["metadata"]["labels"].get("tailor.dev/gpu-class") != gpu_class_name:
            problems.append(f"{name}: pod label tailor.dev/gpu-class is not {gpu_class_name}")
        if "replicas" in deployment["spec"]:
            problems.append(f"{name}: sets replicas, which every `kubectl apply` would reset under KEDA")
        gpus = worker["resources"].get("limits", {}).get(GPU_RESOURCE)
        if str(gpus) != str(gpu_class.gpus_per_node):
            problems.append(
                f"{name}: limits {GPU_RESOURCE}={gpus}, class has {gpu_class.gpus_per_node} per node"
            )
        if not any(t.get("key") == GPU_RESOURCE for t in pod["spec"].get("tolerations", [])):
            problems.append(f"{name}: no toleration for the {GPU_RESOURCE} taint")
        if not pod["spec"].get("nodeSelector"):
            problems.append(f"{name}: no nodeSelector for the class's GPU nodes")
        stop_grace = float(env.get("TAILOR_GPU_STOP_GRACE_SECONDS", "600"))
        if pod["spec"].get("terminationGracePeriodSeconds", 30) < stop_grace + 120:
            problems.append(
                f"{name}: terminationGracePeriodSeconds leaves no time after the runner's {stop_grace:.0f} s "
                "checkpoint grace to upload the checkpoint and report"
            )
        broker = urlsplit(env["CELERY_BROKER_URL"])
        scaled = scaled_objects_for(docs, deployment)
        if len(scaled) != 1:
            problems.append(f"{name}: {len(scaled)} ScaledObjects scale it, expected 1")
            continue
        spec = scaled[0]["spec"]
        if spec.get("minReplicaCount") != 0:
            problems.append(
                f"{name}: minReplicaCount {spec.get('minReplicaCount')}, an idle pool must scale to 0"
            )
        if not spec.get("cooldownPeriod"):
            problems.append(f"{name}: no cooldownPeriod before scaling to zero")
        if gpu_class_name in slots and slots[gpu_class_name] != spec.get("maxReplicaCount"):
            problems.append(
                f"{name}: maxReplicaCount {spec.get('maxReplicaCount')} but TAILOR_GPU_CLASS_SLOTS runs "
                f"{slots[gpu_class_name]} jobs of {gpu_class_name} at once (one job per worker)"
            )
        redis = [t for t in spec["triggers"] if t["type"] == "redis"]
        if len(redis) != 1:
            problems.append(f"{name}: {len(redis)} redis triggers, expected 1")
            continue
        meta = redis[0]["metadata"]
        if meta.get("listName") != gpu_class.queue:
            problems.append(
                f"{name}: KEDA watches list {meta.get('listName')}, the class's queue is {gpu_class.queue}"
            )
        if meta.get("address") != redis_address:
            problems.append(
                f"{name}: KEDA dials {meta.get('address')}, the broker Service is {redis_address}"
            )
        if f"/{meta.get('databaseIndex')}" != broker.path:
            problems.append(
                f"{name}: KEDA reads database {meta.get('databaseIndex')}, the broker uses {broker.path}"
            )
        occupied = [t for t in spec["triggers"] if t["type"] == "postgresql"]
        if len(occupied) != 1 or f"gpu_class = '{gpu_class_name}'" not in occupied[0]["metadata"]["query"]:
            problems.append(
                f"{name}: no postgresql trigger counting the jobs of class {gpu_class_name} on a GPU"
            )
    for missing in sorted(set(classes) - set(served)):
        problems.append(f"GPU class {missing} has no GPU worker Deployment: its jobs would never run")
    return problems


# Rendering and schemas --------------------------------------------------------------------------------


def test_overlays_are_found() -> None:
    assert {"single-node", "production"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_platform_into_one_namespace(overlay: str) -> None:
    docs = rendered(overlay)
    for kind, name in [
        ("Deployment", "tailor-api"),
        ("Deployment", "tailor-control-worker"),
        ("Deployment", "tailor-beat"),
        ("Deployment", "tailor-vllm"),
        ("StatefulSet", "tailor-redis"),
        ("Job", "tailor-migrate"),
        ("Service", "tailor-api"),
        ("Service", "tailor-redis"),
        ("Service", "tailor-vllm"),
        ("PodDisruptionBudget", "tailor-api"),
        ("PodDisruptionBudget", "tailor-control-worker"),
    ]:
        one(docs, kind, name)
    assert gpu_pools(docs), "no GPU worker Deployment"
    namespaces = {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    # The GpuClass objects are kustomize-only configuration and never reach the cluster.
    assert not objects(docs, "GpuClass")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_objects_validate_against_kubernetes_schemas(overlay: str) -> None:
    errors = []
    for doc in rendered(overlay):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.absolute_path)
            errors.append(f"{doc['kind']} {doc['metadata']['name']} at {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(
                f"{doc['kind']} {doc['metadata']['name']}: {doc['apiVersion']} is not in Kubernetes {KUBERNETES_VERSION}"
            )
    assert not errors, "\n".join(errors)


def test_schema_validation_rejects_unknown_fields() -> None:
    # Strict mode is what catches a misspelt field that the API server would otherwise drop silently.
    api = copy.deepcopy(one(rendered("single-node"), "Deployment", "tailor-api"))
    api["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"memory": "1Gi"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="'resource' was unexpected"):
        kubernetes_validate.validate(api, KUBERNETES_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """KEDA's openAPIV3Schema with unknown fields refused, as kubectl's strict field validation refuses them
    (the API server would otherwise prune them without a word)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def keda_validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    crd = yaml.safe_load((KEDA_SCHEMAS / KEDA_CRDS[kind]).read_text())
    group = crd["spec"]["group"]
    for version in crd["spec"]["versions"]:
        if f"{group}/{version['name']}" == api_version:
            assert version["served"], f"{api_version} {kind} is no longer served by KEDA {KEDA_VERSION}"
            return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))
    raise AssertionError(f"KEDA {KEDA_VERSION} has no {api_version} {kind}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_validate_against_keda_crds(overlay: str) -> None:
    docs = rendered(overlay)
    keda = [doc for doc in docs if doc["apiVersion"].startswith("keda.sh/")]
    assert {doc["kind"] for doc in keda} == {"ScaledObject", "TriggerAuthentication"}
    errors = [
        f"{doc['kind']} {doc['metadata']['name']} at {'/'.join(map(str, error.absolute_path))}: {error.message}"
        for doc in keda
        for error in keda_validator(doc["kind"], doc["apiVersion"]).iter_errors(doc)
    ]
    assert not errors, "\n".join(errors)


def test_keda_validation_rejects_unknown_fields() -> None:
    scaled = copy.deepcopy(objects(rendered("single-node"), "ScaledObject")[0])
    scaled["spec"]["minReplicas"] = 0
    errors = list(keda_validator("ScaledObject", scaled["apiVersion"]).iter_errors(scaled))
    assert any("'minReplicas' was unexpected" in error.message for error in errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_triggers_use_parameters_the_scalers_read(overlay: str) -> None:
    docs = rendered(overlay)
    auths = {doc["metadata"]["name"]: doc for doc in objects(docs, "TriggerAuthentication")}
    for scaled in objects(docs, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            scaler = SCALER_METADATA[trigger["type"]]
            keys = set(trigger["metadata"])
            where = f"{scaled['metadata']['name']} trigger {trigger.get('name', trigger['type'])}"
            assert scaler["required"] <= keys, f"{where} lacks {scaler['required'] - keys}"
            assert keys <= scaler["allowed"], (
                f"{where}: KEDA's {trigger['type']} scaler ignores {keys - scaler['allowed']}"
            )
            # Credentials come through a TriggerAuthentication, never in trigger metadata.
            auth = auths.get(trigger.get("authenticationRef", {}).get("name"))
            assert auth is not None, f"{where}: authenticationRef names no rendered TriggerAuthentication"
            parameters = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
            assert parameters <= scaler["auth"], (
                f"{where}: {parameters - scaler['auth']} are not {trigger['type']} auth parameters"
            )


# What operators rely on -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_and_long_running_ones_have_probes(overlay: str) -> None:
    for workload, template in workloads(rendered(overlay)):
        pod = template["spec"]
        for container in containers(pod):
            where = f"{workload['kind']} {workload['metadata']['name']} container {container['name']}"
            requests = container.get("resources", {}).get("requests", {})
            limits = container.get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= set(requests), f"{where}: requests {requests}"
            assert "memory" in limits, f"{where}: no memory limit"
        if workload["kind"] == "Job":
            continue
        for container in containers(pod, init=False):
            where = f"{workload['kind']} {workload['metadata']['name']} container {container['name']}"
            assert "livenessProbe" in container, f"{where}: no liveness probe"
            if container.get("ports"):
                # Behind a Service: only ready pods get traffic.
                assert "readinessProbe" in container, f"{where}: serves a port without a readiness probe"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_under_the_restricted_pod_security_standard(overlay: str) -> None:
    docs = rendered(overlay)
    namespace = objects(docs, "Namespace")
    assert (
        namespace and namespace[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    )
    for workload, template in workloads(docs):
        pod = template["spec"]
        pod_security = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        for container in containers(pod):
            where = (workload["metadata"]["name"], container["name"])
            security = container.get("securityContext", {})
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
            assert security.get("runAsUser", pod_security.get("runAsUser", 1)) != 0, where
            seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert security.get("readOnlyRootFilesystem") is (where not in WRITABLE_ROOT), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_value_is_rendered(overlay: str) -> None:
    docs = rendered(overlay)
    for secret in objects(docs, "Secret"):
        assert not secret.get("data") and not secret.get("stringData"), (
            f"Secret {secret['metadata']['name']} has values"
        )
    for config in objects(docs, "ConfigMap"):
        for key, value in config.get("data", {}).items():
            assert not SECRET_NAME.search(key), f"ConfigMap {config['metadata']['name']} holds {key}"
            assert not URL_PASSWORD.search(value), (
                f"ConfigMap {config['metadata']['name']} {key} has a password"
            )
    for workload, template in workloads(docs):
        for container in containers(template["spec"]):
            for var in container.get("env", []):
                where = f"{workload['metadata']['name']}/{container['name']} env {var['name']}"
                if "value" not in var:
                    continue
                assert not SECRET_NAME.search(var["name"]), f"{where}: a secret's value written inline"
                for password in URL_PASSWORD.findall(var["value"]):
                    # Only a reference the kubelet fills in from a Secret, e.g. redis://:$(REDIS_PASSWORD)@…
                    assert KUBELET_REFERENCE.fullmatch(password), f"{where}: a URL with an inline password"
    for scaled in objects(docs, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert not SECRET_NAME.search(" ".join(trigger["metadata"])), scaled["metadata"]["name"]


def _example_keys(secret: str) -> set[str]:
    """Keys the example env file of `secret` documents, commented-out optional ones included."""
    path = SECRETS_DIR / f"{secret}.example.env"
    assert path.is_file(), f"Secret {secret} is used but {path.relative_to(ROOT)} does not document it"
    keys = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", line)
        if match:
            keys.add(match.group(1))
    return keys


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_used_is_documented_with_its_keys(overlay: str) -> None:
    docs = rendered(overlay)
    used: dict[str, set[str]] = {}
    for _, template in workloads(docs):
        for container in containers(template["spec"]):
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    used.setdefault(source["secretRef"]["name"], set())
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.setdefault(ref["name"], set()).add(ref["key"])
    for auth in objects(docs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            used.setdefault(ref["name"], set()).add(ref["key"])
    assert {"tailor-secrets", "tailor-data-plane-secrets", "tailor-redis"} <= set(used)
    for secret, keys in used.items():
        documented = _example_keys(secret)
        assert keys <= documented, f"{secret}: {keys - documented} missing from its example env file"
    # GPU nodes hold no database credentials (docs/architecture.md): their Secret has neither key.
    assert not {"DATABASE_URL", "DJANGO_SECRET_KEY"} & _example_keys("tailor-data-plane-secrets")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_and_inference_pods_hold_no_control_plane_credentials(overlay: str) -> None:
    docs = rendered(overlay)
    control_config = next(
        d["metadata"]["name"]
        for d in objects(docs, "ConfigMap")
        if d["metadata"]["name"].startswith("tailor-control-config")
    )
    for deployment in [*gpu_pools(docs), one(docs, "Deployment", "tailor-vllm")]:
        for container in containers(deployment["spec"]["template"]["spec"]):
            sources = {
                ref.get("secretRef", ref.get("configMapRef", {})).get("name")
                for ref in container.get("envFrom", [])
            }
            assert "tailor-secrets" not in sources and control_config not in sources, deployment["metadata"][
                "name"
            ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_gpu_class_has_a_pool_scaled_on_its_queue(overlay: str) -> None:
    assert gpu_pool_problems(rendered(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_celery_process_uses_the_redis_service_as_broker(overlay: str) -> None:
    docs = rendered(overlay)
    services = {
        (doc["metadata"]["name"], port["port"])
        for doc in objects(docs, "Service")
        for port in doc["spec"]["ports"]
    }
    for workload, template in workloads(docs):
        # Every long-lived Tailor process publishes or consumes tasks (the init containers only read the
        # database).
        for container in containers(template["spec"], init=False):
            if container["image"].rpartition(":")[0] not in TAILOR_IMAGES:
                continue
            env = container_env(docs, container)
            broker = urlsplit(env.get("CELERY_BROKER_URL", ""))
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert broker.scheme == "redis", f"{where}: CELERY_BROKER_URL {env.get('CELERY_BROKER_URL')!r}"
            assert (broker.hostname, broker.port) in services, (
                f"{where}: broker {broker.netloc} is no Service"
            )
            assert broker.password == "secret.tailor-redis.password", where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_control_plane_processes(overlay: str) -> None:
    docs = rendered(overlay)
    beat = one(docs, "Deployment", "tailor-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    assert beat["spec"]["template"]["spec"]["containers"][0]["command"] == ["tailor", "worker", "beat"]
    beat_probe = beat["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"]
    # `tailor worker beat` keeps its schedule in TAILOR_HOME/celerybeat-schedule (tailor.cli).
    home = config_map(docs, "tailor-config")["TAILOR_HOME"]
    assert beat_probe[:2] == ["tailor-healthcheck", "fresh"]
    assert beat_probe[2] == f"{home}/celerybeat-schedule*"
    control = one(docs, "Deployment", "tailor-control-worker")["spec"]["template"]["spec"]["containers"][0]
    assert control["command"][:3] == ["tailor", "worker", "control"]
    # The control worker's Celery node is control@<host> (tailor.cli).
    assert control["livenessProbe"]["exec"]["command"] == ["tailor-healthcheck", "celery", "control"]
    api = one(docs, "Deployment", "tailor-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["command"][0] == "gunicorn"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    migrate = one(docs, "Job", "tailor-migrate")["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(migrate["command"])
    assert re.search(r"tailor migrate --noinput && tailor endpoint sync", script), script


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_disruption_budgets_select_running_pods(overlay: str) -> None:
    docs = rendered(overlay)
    templates = [(workload, template) for workload, template in workloads(docs) if workload["kind"] != "Job"]

    def matching(selector: dict[str, str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(w, t) for w, t in templates if selector.items() <= t["metadata"]["labels"].items()]

    for service in objects(docs, "Service"):
        selected = matching(service["spec"]["selector"])
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} workloads"
        ports = {p.get("name") for c in selected[0][1]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (
                f"Service {service['metadata']['name']}: no container port {port['targetPort']}"
            )
    for budget in objects(docs, "PodDisruptionBudget"):
        selected = matching(budget["spec"]["selector"]["matchLabels"])
        assert [w["metadata"]["name"] for w, _ in selected] == [budget["metadata"]["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay: str) -> None:
    docs = rendered(overlay)
    tailor_tags = set()
    for _, template in workloads(docs):
        for container in containers(template["spec"]):
            image = container["image"]
            name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
            assert name and tag and tag != "latest" and "/" not in tag, f"{image} is not pinned"
            if name in TAILOR_IMAGES:
                tailor_tags.add(tag)
    assert len(tailor_tags) == 1, f"Tailor's images come from one release, not {tailor_tags}"
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    pinned = {
        image["name"]
        for image in kustomization.get("images", [])
        if image.get("newTag") or image.get("digest")
    }
    assert set(TAILOR_IMAGES) <= pinned, f"{overlay} pins {pinned} in `images:`"


def test_production_runs_three_api_replicas_and_two_gpu_classes() -> None:
    docs = rendered("production")
    assert one(docs, "Deployment", "tailor-api")["spec"]["replicas"] == 3
    classes = parse_gpu_classes(config_map(docs, "tailor-config")["TAILOR_GPU_CLASSES"])
    assert [(c.name, c.gpus_per_node) for c in classes] == [("l4", 1), ("h100", 8)]
    assert len(gpu_pools(docs)) == 2


def test_single_node_runs_one_default_gpu_class() -> None:
    docs = rendered("single-node")
    classes = parse_gpu_classes(config_map(docs, "tailor-config")["TAILOR_GPU_CLASSES"])
    assert [c.name for c in classes] == ["default"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vllm_serves_runtime_lora_with_the_endpoint_agent_beside_it(overlay: str) -> None:
    docs = rendered(overlay)
    deployment = one(docs, "Deployment", "tailor-vllm")
    pod = deployment["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    vllm, agent = by_name["vllm"], by_name["endpoint-agent"]
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+\S*", vllm["image"]), vllm["image"]
    argv = [*vllm.get("command", []), *vllm["args"]]
    assert "--enable-lora" in argv
    rank = int(option(argv, "--max-lora-rank") or 0)
    assert rank == 64
    vllm_env = container_env(docs, vllm)
    assert vllm_env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"]["path"] == "/health"
    assert int(vllm["resources"]["limits"][GPU_RESOURCE]) >= 1
    # The agent: its command, its settings, and the adapter folder it shares with vLLM.
    assert agent["command"][:4] == ["tailor", "worker", "agent", "--endpoint"]
    endpoint = agent["command"][4]
    assert agent_queue(endpoint) == f"endpoint.{endpoint}"
    assert agent["livenessProbe"]["exec"]["command"] == ["tailor-healthcheck", "celery", f"agent-{endpoint}"]
    agent_env = container_env(docs, agent)
    assert agent_env["TAILOR_AGENT_API_URL"] == "http://127.0.0.1:8000"
    assert agent_env["TAILOR_AGENT_ADAPTER_DIR"] == "/adapters"
    mounts = {c["name"]: {m["mountPath"]: m["name"] for m in c["volumeMounts"]} for c in (vllm, agent)}
    shared = mounts["vllm"]["/adapters"]
    assert mounts["endpoint-agent"]["/adapters"] == shared
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == shared)
    # The registry knows the server by the Service, the base model by its served name, the agent by its name.
    entries = json.loads(config_map(docs, "tailor-control-config")["TAILOR_ENDPOINTS"])
    (entry,) = [e for e in entries if e["name"] == endpoint]
    service = one(docs, "Service", "tailor-vllm")
    assert entry["kind"] == "vllm" and entry["delivery"] == "agent"
    assert entry["url"] == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert entry["max_lora_rank"] == rank
    served_name = option(argv, "--served-model-name") or vllm["args"][0]
    assert served_name in entry["base_models"]


# Adding a GPU class, the way deploy/k8s/README.md tells -----------------------------------------------


def _tree_with_class(tmp_path: Path, *, listed: bool) -> Path:
    """A copy of deploy/k8s whose production overlay gained class `a100` (2 GPUs a node, up to 3 workers):
    one new folder, its line in `resources`, and, when `listed`, its entries in TAILOR_GPU_CLASSES and
    TAILOR_GPU_CLASS_SLOTS."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    overlay = tree / "overlays" / "production"
    folder = overlay / "gpu-classes" / "a100"
    shutil.copytree(overlay / "gpu-classes" / "l4", folder)
    kustomization = folder / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("l4", "a100"))
    gpu_class = yaml.safe_load((folder / "gpu-class.yaml").read_text())
    gpu_class["metadata"]["name"] = "a100"
    gpu_class["spec"].update(
        queue="gpu.a100",
        gpusPerNode=2,
        maxReplicas=3,
        nodeSelector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"},
    )
    (folder / "gpu-class.yaml").write_text(yaml.safe_dump(gpu_class))
    text = (overlay / "kustomization.yaml").read_text()
    text = text.replace("  - gpu-classes/h100\n", "  - gpu-classes/h100\n  - gpu-classes/a100\n")
    if listed:
        text = re.sub(r"(TAILOR_GPU_CLASSES=\S+)", r"\1,a100:40:gpu.a100:2", text)
        text = re.sub(r"(TAILOR_GPU_CLASS_SLOTS=\S+)", r"\1,a100:3", text)
    (overlay / "kustomization.yaml").write_text(text)
    return overlay


def test_adding_a_gpu_class_is_one_folder(tmp_path: Path) -> None:
    docs = render(_tree_with_class(tmp_path, listed=True))
    assert gpu_pool_problems(docs) == []
    pool = one(docs, "Deployment", "tailor-gpu-worker-a100")
    worker = pool["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"][GPU_RESOURCE] == 2
    assert pool["spec"]["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"
    }
    scaled = one(docs, "ScaledObject", "tailor-gpu-worker-a100")
    assert scaled["spec"]["maxReplicaCount"] == 3
    assert scaled["spec"]["scaleTargetRef"]["name"] == "tailor-gpu-worker-a100"
    # The existing pools are untouched.
    assert {d["metadata"]["name"] for d in gpu_pools(docs)} == {
        "tailor-gpu-worker-l4",
        "tailor-gpu-worker-h100",
        "tailor-gpu-worker-a100",
    }


def test_a_pool_missing_from_tailor_gpu_classes_is_caught(tmp_path: Path) -> None:
    problems = gpu_pool_problems(render(_tree_with_class(tmp_path, listed=False)))
    assert problems == [
        "tailor-gpu-worker-a100: --gpu-class a100 is not in TAILOR_GPU_CLASSES ['h100', 'l4']"
    ]


# What KEDA reads, read from the real Redis and PostgreSQL -------------------------------------------


@pytest.mark.integration
def test_a_dispatch_waits_in_the_redis_list_keda_watches() -> None:
    # KEDA's redis scaler asks Redis for the TYPE of `listName`, then its LLEN: a job the control plane
    # sends to a class's queue must be exactly that, a list named after the queue in the broker's database.
    import redis

    broker_url = str(celery_app.conf.broker_url or "")
    if not broker_url.startswith("redis://"):
        pytest.skip("needs the Redis broker of `make test` (CELERY_BROKER_URL=redis://…)")
    queue = f"gpu.k8s-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(broker_url)
    try:
        celery_app.send_task(RUN_JOB_TASK, kwargs={"dispatch": {"job": "ftjob-test"}}, queue=queue)
        assert client.type(queue) == b"list"
        assert client.llen(queue) == 1
    finally:
        delete_queue(queue)
        client.delete(queue)
        client.close()


@pytest.mark.django_db
def test_the_occupied_query_counts_what_the_scheduler_counts(team: Team) -> None:
    # The postgresql trigger keeps a training pool from being scaled to zero (a GPU worker acknowledges its
    # job on receipt, so the Redis list is empty while it trains). It must count exactly the scheduler's
    # OCCUPYING jobs of its class, run as plain SQL against the real schema.
    (scaled,) = [
        so for so in objects(rendered("production"), "ScaledObject") if so["metadata"]["name"].endswith("-l4")
    ]
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "postgresql"]

    def keda_count() -> int:
        with connection.cursor() as cursor:
            cursor.execute(trigger["metadata"]["query"])
            return int(cursor.fetchone()[0])

    job = create_job(team)
    now = timezone.now()
    for status, dispatched_at, gpu_class, expected in [
        ("queued", None, "l4", 0),
        ("queued", now, "l4", 1),
        ("running", now, "l4", 1),
        ("pausing", now, "l4", 1),
        ("cancelling", now, "l4", 1),
        ("paused", None, "l4", 0),
        ("succeeded", None, "l4", 0),
        ("running", now, "h100", 0),
    ]:
        FineTuningJob.objects.filter(pk=job.pk).update(
            status=status, dispatched_at=dispatched_at, gpu_class=gpu_class
        )
        scheduler_count = FineTuningJob.objects.filter(OCCUPYING, gpu_class="l4").count()
        assert keda_count() == scheduler_count == expected, (status, dispatched_at, gpu_class)
