"""The Kubernetes example under conf/kubernetes/ parses, names only real Kubernetes fields, and
holds together: its lbd config passes `lbd check`, its worker config `lbd-worker check`, and
the mounts, ports, Services and the autoscaler point at what exists.

Field names are checked offline against the model classes of the `kubernetes` package (the
official client, generated from the API's OpenAPI spec): each document is walked from the
class its apiVersion and kind name, key by key through ``attribute_map`` (the JSON names) and
``openapi_types`` (each field's type), so a misspelt or invented key anywhere fails with its
path. Then the client's own deserializer builds the object, which refuses a missing required
field.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.procs import ROOT

from kubernetes import client  # noqa: E402  (the test extras install it)

EXAMPLE = ROOT / "conf" / "kubernetes"

# (apiVersion, kind) -> the client's model class. Anything else is an error: add it here
# only for a kind the client has a model for.
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("v1", "Service"): "V1Service",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}

_LIST = re.compile(r"(?:list|List)\[(.+)\]")
_DICT = re.compile(r"(?:dict|Dict)[\[(]\s*str\s*,\s*(.+)[\])]")


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLE.glob("*.yaml")):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document is not None:
                found.append((f"{path.name}#{index}", document))
    return found


DOCUMENTS = _documents()


def _ids() -> list[str]:
    return [f"{where}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}" for where, doc in DOCUMENTS]


def unknown_fields(value: Any, type_name: str, path: str) -> list[str]:
    """Every key in ``value`` that the type does not have, and every value of the wrong
    shape, with its path. ``type_name`` is an ``openapi_types`` string."""
    if match := _LIST.fullmatch(type_name):
        if not isinstance(value, list):
            return [f"{path}: a list expected, not {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in unknown_fields(item, match[1], f"{path}[{i}]")]
    if match := _DICT.fullmatch(type_name):
        if not isinstance(value, dict):
            return [f"{path}: a mapping expected, not {type(value).__name__}"]
        return [p for key, item in value.items() for p in unknown_fields(item, match[1], f"{path}.{key}")]
    if type_name == "object":           # IntOrString and free-form fields
        return []
    if type_name in ("str", "datetime", "date"):
        # Strict on purpose: the API takes labels, nodeSelector values and env values only
        # as strings (an unquoted `true` or `1` is refused), and quantities quoted are safe.
        return [] if isinstance(value, str) else [f"{path}: a string expected, not {value!r} (quote it)"]
    if type_name == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: an integer expected, not {value!r}"]
    if type_name == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: a number expected, not {value!r}"]
    if type_name == "bool":
        return [] if isinstance(value, bool) else [f"{path}: true or false expected, not {value!r}"]
    model = getattr(client, type_name, None)
    assert model is not None and hasattr(model, "attribute_map"), f"{path}: no model class {type_name}"
    if not isinstance(value, dict):
        return [f"{path}: a mapping ({type_name}) expected, not {type(value).__name__}"]
    attribute = {json_name: name for name, json_name in model.attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in attribute:
            known = ", ".join(sorted(attribute))
            problems.append(f"{path}.{key}: not a field of {type_name} (fields: {known})")
        else:
            problems += unknown_fields(item, model.openapi_types[attribute[key]], f"{path}.{key}")
    return problems


class _Response:
    """What ``ApiClient.deserialize`` reads: a body in ``data``."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.data = json.dumps(document)


def _model_name(document: dict[str, Any]) -> str:
    key = (document.get("apiVersion"), document.get("kind"))
    assert key in MODELS, f"unknown apiVersion/kind {key}; known: {sorted(MODELS)}"
    return MODELS[key]


# --------------------------------------------------------------------------- the walker itself

def test_the_walker_finds_unknown_and_misplaced_fields() -> None:
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "lables": {}},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {
            "nodeSelector": {"gpu": True},
            "containers": [{"name": "c", "image": "i", "resources": {"limit": {"cpu": "1"}},
                            "ports": [{"containerPort": "80"}],
                            "livenessProbe": {"httpGet": {"path": "/", "port": 80}}}]}}},
    }
    problems = unknown_fields(deployment, "V1Deployment", "Deployment")
    assert any(p.startswith("Deployment.metadata.lables: not a field") for p in problems), problems
    assert any(".resources.limit: not a field" in p for p in problems), problems
    assert any(".nodeSelector.gpu: a string expected" in p for p in problems), problems
    assert any(".containerPort: an integer expected" in p for p in problems), problems
    assert len(problems) == 4, problems
    fixed = json.loads(json.dumps(deployment).replace('"lables"', '"labels"').replace('"limit"', '"limits"')
                       .replace("true", '"true"').replace('"80"', "80"))
    assert unknown_fields(fixed, "V1Deployment", "Deployment") == []


# --------------------------------------------------------------------------- every document

def test_the_example_has_every_part() -> None:
    kinds = sorted({(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCUMENTS})
    for expected in [("ConfigMap", "lbd-config"), ("Deployment", "lbd"), ("Service", "lbd"),
                     ("ConfigMap", "lbd-worker-config"), ("Deployment", "lbd-worker"),
                     ("Service", "lbd-worker"), ("Deployment", "lbd-redis"), ("Service", "lbd-redis"),
                     ("HorizontalPodAutoscaler", "lbd-worker")]:
        assert expected in kinds, kinds


@pytest.mark.parametrize(("where", "document"), DOCUMENTS, ids=_ids())
def test_every_field_is_a_real_kubernetes_field(where: str, document: dict[str, Any]) -> None:
    name = _model_name(document)
    assert unknown_fields(document, name, document["kind"]) == []


@pytest.mark.parametrize(("where", "document"), DOCUMENTS, ids=_ids())
def test_the_client_builds_every_document(where: str, document: dict[str, Any]) -> None:
    """The generated models refuse a missing required field (a container's name, a port's
    number, the HPA's maxReplicas) as they are built."""
    built = client.ApiClient().deserialize(_Response(document), _model_name(document))
    assert built.kind == document["kind"]
    assert built.metadata.name == document["metadata"]["name"]
    assert built.metadata.namespace == "lbd" or document["kind"] == "Namespace"


# --------------------------------------------------------------------------- how they fit together

def _one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in DOCUMENTS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
    return found[0]


def _config(name: str, key: str, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    text = _one("ConfigMap", name)["data"][key]
    path = tmp_path / key
    path.write_text(text)
    return path, yaml.safe_load(text)


def _container(deployment: str) -> dict[str, Any]:
    containers = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def _mount_of(deployment: str, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume mount a file path lies in, and its volume."""
    spec = _one("Deployment", deployment)["spec"]["template"]["spec"]
    mounts = [m for m in spec["containers"][0].get("volumeMounts", [])
              if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mounts) == 1, f"{path} is in no mount (or in several) of {deployment}"
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[0]["name"])
    return mounts[0], volume


def test_the_lbd_config_passes_lbd_check(tmp_path: Path) -> None:
    path, _ = _config("lbd-config", "lbd.yaml", tmp_path)
    done = subprocess.run([sys.executable, "-m", "lbd", "check", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test is successful" in done.stdout


def test_the_worker_config_passes_lbd_worker_check(tmp_path: Path) -> None:
    path, _ = _config("lbd-worker-config", "worker.yaml", tmp_path)
    done = subprocess.run([sys.executable, "-m", "lbd_worker", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_lbd_reads_its_config_from_a_directory_mount_and_the_token_from_a_secret(tmp_path: Path) -> None:
    _, config = _config("lbd-config", "lbd.yaml", tmp_path)
    container = _container("lbd")
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    mount, volume = _mount_of("lbd", config_path)
    # A subPath mount is a copy the kubelet never updates: the file watch would see nothing.
    assert "subPath" not in mount and "subPathExpr" not in mount
    assert volume["configMap"]["name"] == "lbd-config"
    assert config_path.rsplit("/", 1)[1] in _one("ConfigMap", "lbd-config")["data"]
    assert config["watch"]["enabled"] is True
    mount, volume = _mount_of("lbd", config["admin"]["token_file"])
    assert volume["secret"]["secretName"]
    assert int(config["admin"]["address"].rsplit(":", 1)[1]) == _port(container, "admin")
    assert int(config["listen"][0]["address"].rsplit(":", 1)[1]) == _port(container, "http")
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert {"readinessProbe", "livenessProbe"} <= container.keys()
    assert _one("Deployment", "lbd")["spec"]["replicas"] >= 2


def test_the_replicas_share_redis_and_route_to_the_workers_service(tmp_path: Path) -> None:
    _, config = _config("lbd-config", "lbd.yaml", tmp_path)
    redis = _one("Service", "lbd-redis")
    workers = _one("Service", "lbd-worker")
    redis_at = f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/"
    workers_at = f"http://{workers['metadata']['name']}:{workers['spec']['ports'][0]['port']}"
    for name, pool in config["pools"].items():
        assert pool["rate_limit"]["store"].startswith(redis_at), name
        assert [b["url"] for b in pool["backends"]] == [workers_at], name
    _, worker = _config("lbd-worker-config", "worker.yaml", tmp_path)
    assert int(worker["listen"].rsplit(":", 1)[1]) == _port(_container("lbd-worker"), "http")


@pytest.mark.parametrize("service", ["lbd", "lbd-admin", "lbd-worker", "lbd-redis"])
def test_each_service_selects_its_pods_and_names_their_ports(service: str) -> None:
    spec = _one("Service", service)["spec"]
    deployment = next(doc for _, doc in DOCUMENTS if doc["kind"] == "Deployment"
                      and spec["selector"].items() <= doc["spec"]["template"]["metadata"]["labels"].items())
    assert deployment["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for port in spec["ports"]:
        assert port["targetPort"] in names, (service, port)


def test_the_workers_take_a_gpu_and_scale_on_its_utilization() -> None:
    worker = _one("Deployment", "lbd-worker")["spec"]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["nodeSelector"] and worker["tolerations"]
    hpa = _one("HorizontalPodAutoscaler", "lbd-worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lbd-worker"}
    metrics = hpa["spec"]["metrics"]
    names = [m[m["type"].lower()]["metric"]["name"] for m in metrics if m["type"] in ("Pods", "External")]
    assert "DCGM_FI_DEV_GPU_UTIL" in names
    assert "prometheus-adapter" in (EXAMPLE / "hpa.yaml").read_text()


@pytest.mark.parametrize("deployment", ["lbd", "lbd-worker", "lbd-redis"])
def test_every_pod_runs_unprivileged(deployment: str) -> None:
    spec = _one("Deployment", deployment)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "resources" in container and "readinessProbe" in container and "livenessProbe" in container
