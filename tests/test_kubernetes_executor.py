"""The Kubernetes executor: the Job and Secret bodies it sends, and its lifecycle against the
stand-in API server (tests/standins/kubernetes.py) through the official client. No database."""

import base64
import importlib
import json
import re
import sys
import time
import uuid

import pytest

from container_manager.exceptions import ExecutorUnavailable, HostRefused, LaunchError
from container_manager.executors.base import EXITED, NOT_FOUND, RUNNING
from container_manager.executors.kubernetes import (
    KubernetesExecutor,
    job_manifest,
    job_name,
    secret_manifests,
)
from container_manager.executors.kubernetes.connection import INSTALL_HINT
from container_manager.executors.kubernetes.manifests import label_value, validate_config
from container_manager.spec import HostSpec, LaunchSpec, Mount, RegistryAuth

from . import specs
from .conftest import database_independent
from .standins.kubernetes import use_standin

pytestmark = database_independent()

SECRET = "s3cr3t-value-never-shown"
PASSWORD = "registry-pa55word"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def confinement(**overrides):
    return specs.confinement(**{"add_capabilities": ("CHOWN", "KILL"), **overrides})


def make_spec(host="k8s", job_id=None, attempt=1, env=None, secret_names=(), **overrides):
    values = {
        "job_id": job_id or str(uuid.uuid4()),
        "attempt": attempt,
        "host": host,
        "image": "registry.example.com/team/app:1.0",
        "command": ("sh", "-c", "echo hi"),
        "env": {"GREETING": "hi"} if env is None else env,
        "secret_names": frozenset(secret_names),
        "confinement": confinement(),
        "timeout_seconds": 120,
    }
    values.update(overrides)
    return LaunchSpec(**values)


def secret_spec(**overrides):
    return make_spec(
        env={"GREETING": "hi", "API_TOKEN": SECRET},
        secret_names={"API_TOKEN"},
        registry_auth=RegistryAuth("registry.example.com", "robot", PASSWORD),
        **overrides,
    )


@pytest.fixture
def standin(request):
    return use_standin(request)


def executor_for(standin, name="k8s", **config):
    config = {"api_url": standin.url, "timeout": 5, **config}
    return KubernetesExecutor(HostSpec(name=name, executor_type="kubernetes", config=config))


def container_of(job):
    return job["spec"]["template"]["spec"]["containers"][0]


# -- the bodies ---------------------------------------------------------------------------------


def test_the_job_name_is_a_short_dns_label_fixed_per_attempt():
    job_id = str(uuid.uuid4())
    name = job_name(job_id, 3)
    assert DNS_LABEL.match(name) and len(name) <= 63
    assert name.startswith(f"cm-{job_id[:8]}-") and name.endswith("-3")
    assert job_name(job_id, 3) == name != job_name(job_id, 4)
    # Two ids with the same first 8 characters do not share a name.
    assert job_name("abcdefgh-1", 1) != job_name("abcdefgh-2", 1)
    long_odd = job_name("Weird Job ID / " + "x" * 300, 12345)
    assert DNS_LABEL.match(long_odd) and len(long_odd) <= 63


def test_the_job_runs_once_within_its_deadline_labelled_as_ours():
    spec = make_spec(host="Build host #1 (eu)", memory_mb=512, cpus=1.5, gpus=2)
    job = job_manifest(spec, {})
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 120
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    assert (
        job_manifest(spec, {"ttl_seconds_after_finished": 60})["spec"]["ttlSecondsAfterFinished"]
        == 60
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["image"] == spec.image
    assert container["args"] == ["sh", "-c", "echo hi"]  # the image's entrypoint is kept
    assert container["resources"] == {
        "limits": {"memory": "512Mi", "cpu": "1500m", "nvidia.com/gpu": "2"}
    }
    labels = job["metadata"]["labels"]
    assert labels == job["spec"]["template"]["metadata"]["labels"]
    assert labels["container-manager/job-id"] == spec.job_id
    assert labels["container-manager/attempt"] == "1"
    assert labels["container-manager/managed"] == "true"
    for key, value in labels.items():
        assert key.startswith("container-manager/")
        assert LABEL_VALUE.match(value) and len(value) <= 63
    # The host's name is no valid label value: a stable one stands for it, the exact one is
    # an annotation.
    assert labels["container-manager/host"] == label_value("Build host #1 (eu)")
    assert job["metadata"]["annotations"]["container-manager/host"] == "Build host #1 (eu)"


def test_the_confinement_becomes_the_security_context():
    mounts = (Mount("/srv/shared", "/data", True), Mount("/srv/out", "/out", False))
    spec = make_spec(
        confinement=confinement(
            user="1000:2000",
            read_only_root=True,
            host_network=True,
            host_pid=True,
            add_capabilities=("CAP_NET_ADMIN", "CHOWN"),
            mounts=mounts,
        )
    )
    job = job_manifest(spec, {})
    context = container_of(job)["securityContext"]
    assert context == {
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "CHOWN"]},
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "runAsUser": 1000,
        "runAsGroup": 2000,
    }
    pod = job["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    assert pod["volumes"] == [
        {"name": "mount-0", "hostPath": {"path": "/srv/shared"}},
        {"name": "mount-1", "hostPath": {"path": "/srv/out"}},
    ]
    assert container_of(job)["volumeMounts"] == [
        {"name": "mount-0", "mountPath": "/data", "readOnly": True},
        {"name": "mount-1", "mountPath": "/out", "readOnly": False},
    ]
    default = job_manifest(make_spec(), {})
    assert "runAsUser" not in container_of(default)["securityContext"]
    assert "hostNetwork" not in default["spec"]["template"]["spec"]


def test_a_privileged_container_is_not_also_told_it_cannot_escalate():
    # The API refuses that combination; a privileged container has every privilege anyway.
    job = job_manifest(make_spec(confinement=confinement(privileged=True)), {})
    context = container_of(job)["securityContext"]
    assert context["privileged"] is True
    assert "allowPrivilegeEscalation" not in context


@pytest.mark.parametrize("user", ["nobody", "1000:staff", "app:1000"])
def test_a_user_given_by_name_is_refused(user):
    with pytest.raises(LaunchError, match="numeric"):
        job_manifest(make_spec(confinement=confinement(user=user)), {})


def test_secrets_are_in_secrets_owned_by_the_job_never_in_its_spec():
    spec = secret_spec()
    job = job_manifest(spec, {}, suspend=True)
    text = json.dumps(job)
    assert SECRET not in text and PASSWORD not in text
    assert base64.b64encode(SECRET.encode()).decode() not in text
    assert job["spec"]["suspend"] is True
    name = job["metadata"]["name"]
    env = {var["name"]: var for var in container_of(job)["env"]}
    assert env["GREETING"] == {"name": "GREETING", "value": "hi"}
    assert env["API_TOKEN"] == {
        "name": "API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": f"{name}-env", "key": "API_TOKEN"}},
    }
    assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": f"{name}-registry"}]

    env_secret, registry = secret_manifests(spec, "uid-1")
    for secret in (env_secret, registry):
        (owner,) = secret["metadata"]["ownerReferences"]
        assert owner["apiVersion"] == "batch/v1" and owner["kind"] == "Job"
        assert (owner["name"], owner["uid"]) == (name, "uid-1")
    assert env_secret["metadata"]["name"] == f"{name}-env"
    assert base64.b64decode(env_secret["data"]["API_TOKEN"]).decode() == SECRET
    assert "GREETING" not in env_secret["data"]
    assert registry["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(base64.b64decode(registry["data"][".dockerconfigjson"]))
    auth = config["auths"]["registry.example.com"]
    assert (auth["username"], auth["password"]) == ("robot", PASSWORD)
    assert base64.b64decode(auth["auth"]).decode() == f"robot:{PASSWORD}"
    assert repr(spec).count(SECRET) == 0


def test_executor_config_is_checked():
    validate_config({"namespace": "jobs", "ttl_seconds_after_finished": 10, "in_cluster": True})
    for bad in (
        {"nmespace": "x"},
        {"namespace": "Not_Valid"},
        {"timeout": True},
        {"image_pull_policy": "Sometimes"},
        {"in_cluster": True, "kubeconfig": "/x"},
    ):
        with pytest.raises(Exception, match="kubernetes option|unknown"):
            validate_config(bad)


# -- against the stand-in -----------------------------------------------------------------------


def test_a_job_with_secrets_runs_with_them_and_leaves_nothing(standin):
    standin.behave(seconds=0.2, exit_code=0, stdout="done\n")
    executor = executor_for(standin)
    spec = secret_spec()
    execution_id = executor.launch(spec)
    assert execution_id == job_name(spec.job_id, 1)
    # Created suspended, its Secrets made owned by it, then resumed.
    posted = [r for r in standin.requests if r[0] == "POST"]
    assert [r[1].rsplit("/", 1)[-1] for r in posted] == ["jobs", "secrets", "secrets"]
    assert posted[0][3]["spec"]["suspend"] is True
    for _method, _path, headers, _body in posted:
        assert {k.lower(): v for k, v in headers.items()}["content-type"] == "application/json"
    for _method, path, _headers, body in standin.requests:
        assert SECRET not in json.dumps(body) or path.endswith("/secrets")
    job = standin.job(execution_id)
    assert job["spec"]["suspend"] is False
    owned = standin.secrets_of()
    assert {s["metadata"]["name"] for s in owned} == {
        f"{execution_id}-env",
        f"{execution_id}-registry",
    }
    for secret in owned:
        assert secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert executor.wait(execution_id, timeout=10) is True
    outcome = executor.harvest(execution_id)
    assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (0, "done\n", "")
    assert (outcome.peak_memory_bytes, outcome.cpu_seconds) == (None, None)
    executor.cleanup(execution_id)
    assert any(
        m == "DELETE" and "propagationPolicy=Background" in p for m, p, _, _ in standin.requests
    )
    assert standin.job(execution_id) is None
    assert standin.secrets_of() == [] and standin.pods_of(execution_id) == []
    assert executor.status(execution_id) == NOT_FOUND
    executor.cleanup(execution_id)  # twice is fine


def test_launching_an_attempt_again_returns_the_job_it_has(standin):
    standin.behave(seconds=5)
    executor = executor_for(standin)
    spec = secret_spec()
    first = executor.launch(spec)
    assert executor.launch(spec) == first
    assert len([r for r in standin.requests if r[0] == "POST" and r[1].endswith("/jobs")]) == 2
    assert len(standin.pods_of(first)) == 1
    assert executor.find_execution(spec.job_id, 1) == first
    assert executor.find_execution(spec.job_id, 2) is None
    assert executor.list_executions() == {first: spec.job_id}
    assert executor_for(standin, name="another-host").list_executions() == {}


def test_a_secret_left_by_an_earlier_job_of_that_name_is_replaced(standin):
    executor = executor_for(standin)
    spec = secret_spec()
    name = job_name(spec.job_id, 1)
    # A Job of this attempt was deleted; the garbage collector has not removed its Secret yet.
    stale = secret_manifests(spec, "old-uid")[0]
    standin.handle("POST", "/api/v1/namespaces/default/secrets", {}, stale)
    executor.launch(spec)
    uid = standin.job(name)["metadata"]["uid"]
    for secret in standin.secrets_of():
        assert secret["metadata"]["ownerReferences"][0]["uid"] == uid


def test_a_job_name_taken_by_another_job_is_not_adopted(standin):
    executor = executor_for(standin)
    spec = make_spec()
    name = executor.launch(spec)
    standin.jobs[("default", name)]["metadata"]["annotations"]["container-manager/job-id"] = "x"
    with pytest.raises(LaunchError, match="belongs to job x"):
        executor.launch(spec)


def test_wait_watches_the_job(standin):
    standin.behave(seconds=0.5, exit_code=3, stdout="hi\n", stderr="oops\n")
    executor = executor_for(standin)
    execution_id = executor.launch(make_spec())
    assert executor.status(execution_id) == RUNNING
    started = time.monotonic()
    assert executor.wait(execution_id, timeout=10) is True
    assert time.monotonic() - started < 3
    assert any("watch=true" in path for _, path, _, _ in standin.requests)
    outcome = executor.harvest(execution_id)
    # Kubernetes serves the two streams merged: the log is stdout.
    assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (3, "hi\noops\n", "")
    assert b"hi" in b"".join(executor.stream_logs(execution_id))


def test_an_out_of_memory_kill_is_reported(standin):
    standin.behave(seconds=0.1, oom=True)
    executor = executor_for(standin)
    execution_id = executor.launch(make_spec(memory_mb=64))
    assert executor.wait(execution_id, timeout=10)
    outcome = executor.harvest(execution_id)
    assert outcome.exit_code == 137 and outcome.oom_killed
    assert "out of memory (limit 64Mi)" in outcome.error


def test_an_image_that_cannot_be_pulled_is_explained(standin):
    standin.behave(pull_error='failed to pull "nope:1": not found')
    executor = executor_for(standin, image_pull_timeout=0)
    execution_id = executor.launch(make_spec(image="nope:1"))
    assert executor.wait(execution_id, timeout=10) is True
    assert executor.status(execution_id) == EXITED
    outcome = executor.harvest(execution_id)
    assert outcome.exit_code is None
    assert "never started: its image could not be pulled" in outcome.error
    assert "ErrImagePull" in outcome.error and "not found" in outcome.error
    executor.cleanup(execution_id)
    assert standin.pods_of(execution_id) == []


def test_an_image_pull_is_retried_for_a_while(standin):
    standin.behave(pull_error="registry unavailable")
    executor = executor_for(standin)  # image_pull_timeout: 300 s
    execution_id = executor.launch(make_spec())
    assert executor.status(execution_id) == RUNNING


def test_a_job_that_never_got_a_pod_says_so(standin):
    standin.behave(no_pod=True)
    executor = executor_for(standin)
    execution_id = executor.launch(make_spec(timeout_seconds=1))
    assert executor.wait(execution_id, timeout=10) is True
    outcome = executor.harvest(execution_id)
    assert outcome.exit_code is None
    assert "never got a pod" in outcome.error and "DeadlineExceeded" in outcome.error


def test_a_job_whose_pod_is_gone_says_its_outcome_is_lost(standin):
    standin.behave(seconds=60)
    executor = executor_for(standin)
    execution_id = executor.launch(make_spec(timeout_seconds=1))
    assert executor.wait(execution_id, timeout=10) is True
    outcome = executor.harvest(execution_id)
    assert outcome.exit_code is None
    assert "its pod is gone" in outcome.error and "DeadlineExceeded" in outcome.error


def test_stop_ends_the_pod_gracefully_and_keeps_the_outcome(standin):
    standin.behave(seconds=60, term_seconds=0.2)
    executor = executor_for(standin)
    execution_id = executor.launch(make_spec())
    executor.stop(execution_id, grace_seconds=2)
    deletes = [p for m, p, _, _ in standin.requests if m == "DELETE"]
    assert any("/pods/" in p and "gracePeriodSeconds=2" in p for p in deletes)
    assert executor.wait(execution_id, timeout=10) is True
    assert executor.harvest(execution_id).exit_code == 143  # SIGTERM
    time.sleep(0.7)  # the pod object is gone now; the outcome is not
    assert executor.harvest(execution_id).exit_code == 143


def test_stop_before_the_pod_exists_deletes_the_job(standin):
    standin.behave(no_pod=True)
    executor = executor_for(standin)
    execution_id = executor.launch(make_spec())
    executor.stop(execution_id, grace_seconds=1)
    assert standin.job(execution_id) is None
    assert executor.wait(execution_id, timeout=1) is True
    assert "stopped before its pod started" in executor.harvest(execution_id).error


def test_rbac_refusal_is_the_hosts_trouble(standin):
    executor = executor_for(standin)
    standin.fault = "forbidden"
    with pytest.raises(HostRefused, match="403 Forbidden.*RBAC") as caught:
        executor.launch(secret_spec())
    assert 'cannot create resource "jobs"' in str(caught.value)
    health = executor.health_check()
    assert not health.healthy and "RBAC" in health.message
    standin.fault = "unauthorized"
    with pytest.raises(HostRefused, match="401"):
        executor.status("cm-x-1")


@pytest.mark.parametrize("fault", ["error", "hang"])
def test_an_api_server_that_fails_is_unavailable(standin, fault):
    executor = executor_for(standin, timeout=1)
    standin.fault = fault
    started = time.monotonic()
    with pytest.raises(ExecutorUnavailable) as caught:
        executor.launch(secret_spec())
    assert time.monotonic() - started < 10
    assert SECRET not in str(caught.value) and PASSWORD not in str(caught.value)
    with pytest.raises(ExecutorUnavailable):
        executor.status("cm-x-1")
    assert not executor.health_check().healthy
    standin.fault = None


def test_an_api_server_that_is_not_there_is_unavailable(standin):
    executor = executor_for(standin)
    assert executor.health_check().healthy
    standin.stop()
    with pytest.raises(ExecutorUnavailable, match="cannot be reached"):
        executor.status("cm-x-1")
    health = executor.health_check()
    assert not health.healthy and standin.url in health.message


def test_an_invalid_job_names_the_field_and_no_secret(standin):
    executor = executor_for(standin)
    spec = make_spec(env={"BAD NAME": "x", "TOKEN": SECRET}, secret_names={"TOKEN"})
    with pytest.raises(LaunchError) as caught:
        executor.launch(spec)
    message = str(caught.value)
    assert "spec.template.spec.containers[0].env[0].name" in message
    assert SECRET not in message


def test_a_user_given_by_name_is_refused_before_anything_is_sent(standin):
    executor = executor_for(standin)
    with pytest.raises(LaunchError, match="numeric"):
        executor.launch(make_spec(confinement=confinement(user="nobody")))
    assert standin.requests == []


def test_a_token_file_is_sent_as_a_bearer_token(standin, tmp_path):
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    executor = executor_for(standin, token_file=str(token))
    assert executor.health_check().healthy
    headers = {key.lower(): value for key, value in standin.requests[-1][2].items()}
    assert headers["authorization"] == "Bearer tok-123"
    missing = executor_for(standin, token_file=str(tmp_path / "nope"))
    health = missing.health_check()
    assert not health.healthy and "cannot be configured" in health.message


def test_health_check(standin):
    health = executor_for(standin, namespace="jobs").health_check()
    assert health.healthy and "namespace 'jobs'" in health.message


# -- without the client library ----------------------------------------------------------------


@pytest.fixture
def no_kubernetes(monkeypatch):
    """As if the ``kubernetes`` package were not installed (None in sys.modules makes any
    import of it fail), with this app's Kubernetes package imported afresh."""
    for name in list(sys.modules):
        if name == "kubernetes" or name.startswith(
            ("kubernetes.", "container_manager.executors.kubernetes")
        ):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    monkeypatch.setitem(sys.modules, "kubernetes.client", None)
    monkeypatch.setitem(sys.modules, "kubernetes.config", None)
    monkeypatch.setitem(sys.modules, "kubernetes.watch", None)


def test_the_package_imports_without_the_client_and_says_what_to_install(no_kubernetes):
    package = importlib.import_module("container_manager.executors.kubernetes")
    host = HostSpec(name="k", executor_type="kubernetes", config={"api_url": "http://127.0.0.1:1"})
    executor = package.KubernetesExecutor(host)
    health = executor.health_check()
    assert not health.healthy and INSTALL_HINT in health.message
    with pytest.raises(ExecutorUnavailable, match=re.escape(INSTALL_HINT)):
        executor.launch(make_spec())
    with pytest.raises(ExecutorUnavailable, match=re.escape(INSTALL_HINT)):
        executor.status("cm-x-1")
    # The bodies need no client.
    assert package.job_manifest(make_spec(), {})["kind"] == "Job"


def test_an_api_message_quoting_a_secret_is_scrubbed():
    from kubernetes.client.exceptions import ApiException

    from container_manager.executors.kubernetes.connection import translate

    body = json.dumps(
        {
            "kind": "Status",
            "message": f'Secret "x" is invalid: data[TOKEN]: Invalid value: "{SECRET}"',
            "details": {"causes": [{"field": "data[TOKEN]"}]},
            "code": 422,
        }
    )
    error = ApiException(status=422, reason="Unprocessable Entity", body=body)
    host = HostSpec(name="k", executor_type="kubernetes")
    translated = translate(error, host, {}, "creating Secret x", LaunchError, [SECRET])
    assert isinstance(translated, LaunchError)
    assert "data[TOKEN]" in str(translated) and SECRET not in str(translated)
    down = translate(ApiException(status=503, body=SECRET), host, {}, "x", LaunchError, [SECRET])
    assert isinstance(down, ExecutorUnavailable) and SECRET not in str(down)
