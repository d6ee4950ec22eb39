"""The container policy: what a job may ask for, where it is checked, and how Docker applies it.

Unit tests of the rules (global and tightened per host), creation refused through the API,
a policy tightened after creation refusing the launch, the remote-engine rule, and real
containers on a real engine showing the confinement from the inside.
"""

import contextlib
import time

import docker.errors
import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management import call_command

from container_manager import policy
from container_manager.api import create_job
from container_manager.conf import DEFAULTS
from container_manager.executors import ExecutorUnavailable
from container_manager.executors.docker import DockerExecutor, confinement_options
from container_manager.launching import launch
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt

from .conftest import TEST_IMAGE, own_labels

pytestmark = pytest.mark.django_db

# Bits of /proc/self/status's capability masks (linux/capability.h).
CAPABILITY_BITS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_ADMIN": 12,
    "NET_RAW": 13, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_ADMIN": 21, "MKNOD": 27,
    "AUDIT_WRITE": 29, "SETFCAP": 31,
}  # fmt: skip


def capability_mask(names):
    return sum(1 << CAPABILITY_BITS[name] for name in names)


def host(name="h", **policy_keys):
    """An unsaved host with a policy: enough for effective_policy and check_job."""
    return ExecutorHost(name=name, executor_type="mock", policy=policy_keys)


def job(host=None, **fields):
    return ContainerJob(image=fields.pop("image", "local/img:1"), host=host, **fields)


def refusals(job):
    """{field: [messages]} that check_job raises for ``job`` ({} if it allows it)."""
    try:
        policy.check_job(job)
    except policy.PolicyViolation as error:
        return error.message_dict
    return {}


LOOSE = {
    "ALLOWED_IMAGES": ["registry.example.com/*", "local/*"],
    "MAX_MEMORY_MB": 4096,
    "MAX_CPUS": 8,
    "MAX_TIMEOUT_SECONDS": 3600,
    "ALLOW_PRIVILEGED": True,
    "ALLOW_HOST_NETWORK": True,
    "ALLOW_HOST_PID": True,
    "ALLOWED_CAPABILITIES": ["NET_ADMIN", "SYS_TIME", "NET_RAW"],
    "ALLOWED_MOUNT_SOURCES": ["/srv", "/data"],
}


# -- the effective policy ------------------------------------------------------------------


def test_with_no_host_the_policy_is_the_settings_and_refuses_every_loosening():
    effective = policy.effective_policy(None)
    assert effective.allowed_images == [["*"]]
    assert (effective.max_memory_mb, effective.max_cpus, effective.max_timeout_seconds) == (
        DEFAULTS["MAX_MEMORY_MB"],
        DEFAULTS["MAX_CPUS"],
        DEFAULTS["MAX_TIMEOUT_SECONDS"],
    )
    assert not effective.allow_privileged
    assert not effective.allow_host_network
    assert not effective.allow_host_pid
    assert effective.allowed_capabilities == []
    assert effective.allowed_mount_sources == []


def test_a_host_tightens_every_key(settings):
    settings.CONTAINER_MANAGER = LOOSE
    effective = policy.effective_policy(
        host(
            allowed_images=["registry.example.com/team/*"],
            max_memory_mb=512,
            max_cpus=0.5,
            max_timeout_seconds=60,
            allow_privileged=False,
            allow_host_network=False,
            allow_host_pid=True,
            allowed_capabilities=["CAP_NET_ADMIN", "NET_RAW"],
            allowed_mount_sources=["/srv/data/", "/data/../data/x"],
        )
    )
    assert effective.allowed_images == [LOOSE["ALLOWED_IMAGES"], ["registry.example.com/team/*"]]
    assert (effective.max_memory_mb, effective.max_cpus, effective.max_timeout_seconds) == (
        512,
        0.5,
        60,
    )
    assert (effective.allow_privileged, effective.allow_host_network) == (False, False)
    assert effective.allow_host_pid
    assert effective.allowed_capabilities == ["NET_ADMIN", "NET_RAW"]
    assert effective.allowed_mount_sources == ["/srv/data", "/data/x"]


def test_a_host_that_tries_to_loosen_changes_nothing_even_if_saved_without_validation():
    # As if written with .update(): the settings still bound everything.
    effective = policy.effective_policy(
        host(
            max_memory_mb=10**9,
            allow_privileged=True,
            allow_host_network=True,
            allow_host_pid=True,
            allowed_capabilities=["SYS_ADMIN"],
            allowed_mount_sources=["/"],
        )
    )
    assert effective.max_memory_mb == DEFAULTS["MAX_MEMORY_MB"]
    assert not (effective.allow_privileged or effective.allow_host_network)
    assert not effective.allow_host_pid
    assert effective.allowed_capabilities == []
    assert effective.allowed_mount_sources == []
    message = "privileged containers are not allowed on host 'h' (rule: ALLOW_PRIVILEGED is off)"
    assert refusals(job(host(allow_privileged=True), privileged=True)) == {"privileged": [message]}


def test_mount_sources_intersect_on_path_boundaries(settings):
    settings.CONTAINER_MANAGER = {"ALLOWED_MOUNT_SOURCES": ["/data", "/srv/a"]}
    effective = policy.effective_policy(host(allowed_mount_sources=["/", "/data2", "/srv"]))
    # "/" narrows to the global prefixes; "/data2" is not under "/data"; "/srv" to "/srv/a".
    assert effective.allowed_mount_sources == ["/data", "/srv/a"]


def test_bad_settings_are_named(settings):
    settings.CONTAINER_MANAGER = {"ALLOWED_MOUNT_SOURCES": ["relative/path"]}
    with pytest.raises(ImproperlyConfigured, match="ALLOWED_MOUNT_SOURCES"):
        policy.effective_policy(None)
    settings.CONTAINER_MANAGER = {"ALLOW_PRIVILEGED": "yes"}
    with pytest.raises(ImproperlyConfigured, match="ALLOW_PRIVILEGED"):
        policy.effective_policy(None)


# -- each rule, from settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (
            {"image": "evil/x:1"},
            "image",
            "'evil/x:1' is not allowed on host 'h' "
            "(allowed images: registry.example.com/*, local/*; rule: ALLOWED_IMAGES)",
        ),
        (
            {"memory_limit": 4097},
            "memory_limit",
            "4097 MB is over the maximum of 4096 MB on host 'h' (rule: MAX_MEMORY_MB)",
        ),
        (
            {"cpu_limit": 8.5},
            "cpu_limit",
            "8.5 cores is over the maximum of 8 cores on host 'h' (rule: MAX_CPUS)",
        ),
        (
            {"timeout_seconds": 3601},
            "timeout_seconds",
            "3601 s is over the maximum of 3600 s on host 'h' (rule: MAX_TIMEOUT_SECONDS)",
        ),
        (
            {"capabilities": ["SYS_ADMIN"]},
            "capabilities",
            "'SYS_ADMIN' is not allowed on host 'h' "
            "(allowed: NET_ADMIN, SYS_TIME, NET_RAW; rule: ALLOWED_CAPABILITIES)",
        ),
        (
            {"mounts": [{"source": "/etc", "target": "/etc"}]},
            "mounts",
            "'/etc' is not under an allowed mount source on host 'h' "
            "(allowed: /srv, /data; rule: ALLOWED_MOUNT_SOURCES)",
        ),
    ],
)
def test_global_rules_refuse_naming_field_and_rule(settings, fields, field, message):
    settings.CONTAINER_MANAGER = LOOSE
    assert refusals(job(host(), **fields)) == {field: [message]}


@pytest.mark.parametrize(
    ("field", "setting_name", "message"),
    [
        ("privileged", "ALLOW_PRIVILEGED", "privileged containers are not allowed"),
        ("host_network", "ALLOW_HOST_NETWORK", "the host's network namespace is not allowed"),
        ("host_pid", "ALLOW_HOST_PID", "the host's PID namespace is not allowed"),
    ],
)
def test_switches_are_off_by_default_and_settings_turn_them_on(
    settings, field, setting_name, message
):
    assert refusals(job(**{field: True})) == {field: [f"{message} (rule: {setting_name} is off)"]}
    settings.CONTAINER_MANAGER = {setting_name: True}
    assert refusals(job(**{field: True})) == {}


def test_everything_a_loose_policy_allows_passes(settings):
    settings.CONTAINER_MANAGER = LOOSE
    allowed = job(
        host(),
        image="registry.example.com/team/app:2",
        memory_limit=4096,
        cpu_limit=8,
        timeout_seconds=3600,
        privileged=True,
        host_network=True,
        host_pid=True,
        capabilities=["NET_ADMIN", "CAP_SYS_TIME"],
        mounts=[
            {"source": "/srv", "target": "/srv"},
            {"source": "/data/in/../out", "target": "/out", "read_only": False},
        ],
        run_as_user="app:staff",
    )
    assert refusals(allowed) == {}


def test_the_default_policy_allows_a_plain_job():
    assert refusals(job(host(), memory_limit=64, cpu_limit=1, run_as_user="1000")) == {}


# -- each rule, tightened by a host ------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy_keys", "fields", "field", "message"),
    [
        (
            {"allowed_images": ["registry.example.com/team/*"]},
            {"image": "registry.example.com/other/x:1"},
            "image",
            "'registry.example.com/other/x:1' is not allowed on host 'h' "
            "(allowed images: registry.example.com/team/*; rule: the host's allowed_images)",
        ),
        (
            {"max_memory_mb": 256},
            {"memory_limit": 512},
            "memory_limit",
            "512 MB is over the maximum of 256 MB on host 'h' (rule: the host's max_memory_mb)",
        ),
        (
            {"max_cpus": 0.5},
            {"cpu_limit": 1},
            "cpu_limit",
            "1 cores is over the maximum of 0.5 cores on host 'h' (rule: the host's max_cpus)",
        ),
        (
            {"max_timeout_seconds": 60},
            {"timeout_seconds": 61},
            "timeout_seconds",
            "61 s is over the maximum of 60 s on host 'h' (rule: the host's max_timeout_seconds)",
        ),
        (
            {"allow_privileged": False},
            {"privileged": True},
            "privileged",
            "privileged containers are not allowed on host 'h' "
            "(rule: the host's allow_privileged is false)",
        ),
        (
            {"allow_host_network": False},
            {"host_network": True},
            "host_network",
            "the host's network namespace is not allowed on host 'h' "
            "(rule: the host's allow_host_network is false)",
        ),
        (
            {"allow_host_pid": False},
            {"host_pid": True},
            "host_pid",
            "the host's PID namespace is not allowed on host 'h' "
            "(rule: the host's allow_host_pid is false)",
        ),
        (
            {"allowed_capabilities": ["NET_RAW"]},
            {"capabilities": ["NET_ADMIN"]},
            "capabilities",
            "'NET_ADMIN' is not allowed on host 'h' "
            "(allowed: NET_RAW; rule: the host's allowed_capabilities)",
        ),
        (
            {"allowed_mount_sources": ["/srv/public"]},
            {"mounts": [{"source": "/srv/private", "target": "/in"}]},
            "mounts",
            "'/srv/private' is not under an allowed mount source on host 'h' "
            "(allowed: /srv/public; rule: the host's allowed_mount_sources)",
        ),
    ],
)
def test_host_rules_refuse_what_settings_allow(settings, policy_keys, fields, field, message):
    settings.CONTAINER_MANAGER = LOOSE
    assert refusals(job(host(), **fields)) == {}  # allowed by the settings alone
    assert refusals(job(host(**policy_keys), **fields)) == {field: [message]}


def test_the_tightest_maximum_is_the_one_named(settings):
    settings.CONTAINER_MANAGER = {"MAX_MEMORY_MB": 1000}
    assert refusals(job(host(max_memory_mb=100), memory_limit=2000)) == {
        "memory_limit": [
            "2000 MB is over the maximum of 100 MB on host 'h' (rule: the host's max_memory_mb)"
        ]
    }


def test_a_host_policy_saved_without_validation_refuses_every_job():
    broken = host(max_memory_mb="lots")
    assert refusals(job(broken)) == {
        "host": [
            "host 'h' has an invalid policy: 'max_memory_mb' must be a whole number of MB "
            "greater than 0, not 'lots'"
        ]
    }


# -- a host's policy is validated ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy_value", "message"),
    [
        ("strict", 'must be a JSON object, e.g. {"allowed_images": '),
        ({"max_memroy_mb": 1}, "unknown policy key 'max_memroy_mb' (known: allowed_images, "),
        ({"max_memory_mb": 0}, "'max_memory_mb' must be a whole number of MB greater than 0"),
        ({"max_memory_mb": True}, "'max_memory_mb' must be a whole number of MB"),
        ({"max_cpus": "2"}, "'max_cpus' must be a number of cores greater than 0, not '2'"),
        ({"max_timeout_seconds": 1.5}, "'max_timeout_seconds' must be a whole number of seconds"),
        ({"allow_privileged": "no"}, "'allow_privileged' must be true or false, not 'no'"),
        ({"allowed_images": "local/*"}, "'allowed_images' must be a list of image patterns"),
        ({"allowed_capabilities": ["net_admin"]}, "'allowed_capabilities' must be a list of "),
        ({"allowed_mount_sources": ["data"]}, "'allowed_mount_sources' must be a list of absolute"),
    ],
)
def test_bad_host_policy_is_refused_naming_the_key(policy_value, message):
    bad = ExecutorHost(name="h", executor_type="mock", policy=policy_value)
    with pytest.raises(ValidationError) as error:
        bad.full_clean()
    assert list(error.value.message_dict) == ["policy"]
    assert error.value.message_dict["policy"][0].startswith(message)


LOOSENING = "a host's policy can only tighten the settings, never loosen them"


@pytest.mark.parametrize(
    ("policy_keys", "message"),
    [
        (
            {"allow_privileged": True},
            f"'allow_privileged' cannot be true: ALLOW_PRIVILEGED is off in settings, and "
            f"{LOOSENING}",
        ),
        ({"allow_host_network": True}, "'allow_host_network' cannot be true: ALLOW_HOST_NETWORK"),
        ({"allow_host_pid": True}, "'allow_host_pid' cannot be true: ALLOW_HOST_PID is off"),
        (
            {"max_memory_mb": 300000},
            f"'max_memory_mb' (300000) is above MAX_MEMORY_MB (262144) in settings; {LOOSENING}",
        ),
        ({"max_cpus": 512}, "'max_cpus' (512) is above MAX_CPUS (256) in settings"),
        ({"max_timeout_seconds": 10**7}, "'max_timeout_seconds' (10000000) is above MAX_TIMEOUT"),
        (
            {"allowed_capabilities": ["SYS_ADMIN"]},
            "'allowed_capabilities' lists SYS_ADMIN, which ALLOWED_CAPABILITIES in settings does "
            f"not allow (allowed: none); {LOOSENING}",
        ),
        (
            {"allowed_mount_sources": ["/etc"]},
            "'allowed_mount_sources' lists /etc, which is not under ALLOWED_MOUNT_SOURCES in "
            f"settings (none); {LOOSENING}",
        ),
    ],
)
def test_a_host_cannot_loosen_the_settings(policy_keys, message):
    loose = ExecutorHost(name="h", executor_type="mock", policy=policy_keys)
    with pytest.raises(ValidationError) as error:
        loose.full_clean()
    assert list(error.value.message_dict) == ["policy"]
    assert error.value.message_dict["policy"][0].startswith(message)


def test_a_host_may_repeat_or_tighten_what_settings_allow(settings):
    settings.CONTAINER_MANAGER = LOOSE
    ExecutorHost(
        name="h",
        executor_type="mock",
        policy={
            "allowed_images": ["anything/*"],
            "max_memory_mb": 4096,
            "max_cpus": 0.25,
            "allow_privileged": True,
            "allow_host_pid": False,
            "allowed_capabilities": ["CAP_NET_ADMIN"],
            "allowed_mount_sources": ["/srv/x/../y"],
        },
    ).full_clean()


# -- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"capabilities": "NET_ADMIN"}, "capabilities", "must be a list of capability names"),
        ({"capabilities": ["net_admin"]}, "capabilities", "'net_admin' is not a capability name"),
        ({"capabilities": ["NET ADMIN"]}, "capabilities", "'NET ADMIN' is not a capability name"),
        ({"capabilities": [12]}, "capabilities", "12 is not a capability name"),
        ({"mounts": {"source": "/srv"}}, "mounts", "must be a list of objects like"),
        ({"mounts": ["/srv:/srv"]}, "mounts", "mount 1 must be an object like"),
        (
            {"mounts": [{"source": "srv", "target": "/srv"}]},
            "mounts",
            "mount 1: 'source' must be an absolute path, not 'srv'",
        ),
        (
            {"mounts": [{"source": "/srv"}]},
            "mounts",
            "mount 1: 'target' must be an absolute path, not None",
        ),
        (
            {"mounts": [{"source": "/srv", "target": "/srv", "read_only": "yes"}]},
            "mounts",
            "mount 1: 'read_only' must be true or false, not 'yes'",
        ),
        (
            {"mounts": [{"source": "/srv", "target": "/srv", "mode": "rw"}]},
            "mounts",
            "mount 1 has unknown key(s) mode (known: source, target, read_only)",
        ),
        (
            {"mounts": [{"source": "/srv", "target": "/.."}]},
            "mounts",
            "mount 1: cannot mount over the container's root '/'",
        ),
        (
            {
                "mounts": [
                    {"source": "/srv/a", "target": "/x"},
                    {"source": "/srv/b", "target": "/x/"},
                ]
            },
            "mounts",
            "mount 2: '/x' is already the target of another mount",
        ),
        (
            {"run_as_user": "root; rm -rf /"},
            "run_as_user",
            "'root; rm -rf /' is not a user[:group]",
        ),
        ({"run_as_user": "1000:"}, "run_as_user", "'1000:' is not a user[:group]"),
        ({"run_as_user": "a:b:c"}, "run_as_user", "'a:b:c' is not a user[:group]"),
    ],
)
def test_malformed_fields_are_named(settings, fields, field, message):
    settings.CONTAINER_MANAGER = LOOSE
    found = refusals(job(host(), **fields))
    assert list(found) == [field]
    assert found[field][0].startswith(message), found


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("/data", True),
        ("/data/", True),
        ("/data/sub/file", True),
        ("//data//sub", True),
        ("/data/./sub/../other", True),
        ("/data2", False),  # a path boundary, not a string prefix
        ("/dat", False),
        ("/data/../etc", False),
        ("/data/../../data/../etc/passwd", False),
        ("/", False),
    ],
)
def test_mount_sources_are_normalised_and_checked_on_path_boundaries(settings, source, allowed):
    settings.CONTAINER_MANAGER = {"ALLOWED_MOUNT_SOURCES": ["/data/"]}
    found = refusals(job(host(), mounts=[{"source": source, "target": "/in"}]))
    assert (found == {}) is allowed, found
    if not allowed:
        normalised = policy.normalize_path(source)
        assert found["mounts"][0].startswith(
            repr(source) if normalised == source else f"{source!r} (that is, {normalised!r})"
        )


@pytest.mark.parametrize("user", ["1000", "1000:1000", "nobody", "app-user.x:staff_1"])
def test_run_as_user_accepts_names_and_numbers(user):
    assert refusals(job(run_as_user=user)) == {}


# -- what an executor is told ------------------------------------------------------------------


def test_confinement_of_a_default_job():
    confined = policy.confinement(job(host()))
    assert confined == policy.Confinement(
        user=None,
        read_only_root=False,
        privileged=False,
        host_network=False,
        host_pid=False,
        add_capabilities=tuple(DEFAULTS["DEFAULT_CAPABILITIES"]),
        pids_limit=DEFAULTS["PIDS_LIMIT"],
        mounts=(),
    )
    assert confined.drop_capabilities == ("ALL",)
    assert confined.no_new_privileges


def test_docker_options_for_a_job_that_asks_for_everything(settings):
    settings.CONTAINER_MANAGER = {**LOOSE, "DEFAULT_CAPABILITIES": ["CHOWN"], "PIDS_LIMIT": 64}
    loose = job(
        host(),
        run_as_user="1000:1000",
        read_only_root=True,
        privileged=True,
        host_network=True,
        host_pid=True,
        capabilities=["CAP_NET_ADMIN", "CHOWN", "NET_ADMIN"],
        mounts=[
            {"source": "/srv/in/", "target": "/in"},
            {"source": "/data", "target": "/out/./", "read_only": False},
        ],
    )
    options = confinement_options(policy.confinement(loose), network="none")
    mounts = options.pop("mounts")
    assert options == {
        "security_opt": ["no-new-privileges:true"],
        "cap_drop": ["ALL"],
        "cap_add": ["CHOWN", "NET_ADMIN"],
        "pids_limit": 64,
        "read_only": True,
        "user": "1000:1000",
        "privileged": True,
        "network_mode": "host",  # the job's host network wins over the configured one
        "pid_mode": "host",
    }
    assert [(m["Type"], m["Source"], m["Target"], m["ReadOnly"]) for m in mounts] == [
        ("bind", "/srv/in", "/in", True),
        ("bind", "/data", "/out", False),
    ]
    plain = policy.confinement(job(host()))
    assert confinement_options(plain, network="none")["network_mode"] == "none"
    assert "network_mode" not in confinement_options(plain)


# -- enforced at creation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"privileged": True}, "privileged"),
        ({"host_network": True}, "host_network"),
        ({"host_pid": True}, "host_pid"),
        ({"capabilities": ["SYS_ADMIN"]}, "capabilities"),
        ({"mounts": [{"source": "/etc", "target": "/etc"}]}, "mounts"),
        ({"run_as_user": "$(id)"}, "run_as_user"),
    ],
)
def test_create_job_refuses_naming_the_field_and_saves_nothing(mock_host, fields, field):
    with pytest.raises(ValidationError) as error:
        create_job("img", ["true"], host=mock_host, **fields)
    assert list(error.value.message_dict) == [field]
    assert ContainerJob.objects.count() == 0


def test_create_job_refuses_an_image_the_host_does_not_allow(mock_host):
    mock_host.policy = {"allowed_images": ["registry.example.com/team/*"]}
    mock_host.full_clean()
    mock_host.save()
    with pytest.raises(ValidationError) as error:
        create_job("evil/x:1", ["true"], host=mock_host, memory_limit=64)
    assert error.value.message_dict == {
        "image": [
            "'evil/x:1' is not allowed on host 'mock' (allowed images: "
            "registry.example.com/team/*; rule: the host's allowed_images)"
        ]
    }
    assert ContainerJob.objects.count() == 0
    assert create_job("registry.example.com/team/app:1", host=mock_host).pk


def test_create_job_reports_policy_and_field_errors_together(mock_host):
    with pytest.raises(ValidationError) as error:
        create_job("img", ["true"], host=mock_host, privileged=True, max_attempts=0)
    assert set(error.value.message_dict) == {"privileged", "max_attempts"}
    assert ContainerJob.objects.count() == 0


# -- enforced again at launch --------------------------------------------------------------------


def run_worker(*args):
    call_command("process_container_jobs", "--until-idle", "--poll-interval", "0.05", *args)


@pytest.mark.django_db(transaction=True)
def test_a_policy_tightened_after_creation_fails_the_job_at_launch_without_retrying(mock_host):
    refused = create_job("docker.io/library/busybox:1", ["true"], host=mock_host, max_attempts=3)
    limited = create_job("local/app:1", ["true"], host=mock_host, memory_limit=512, max_attempts=3)
    fine = create_job("local/app:1", ["true"], host=mock_host, memory_limit=64)
    # The host is tightened (through validation) after the jobs were accepted.
    mock_host.policy = {"allowed_images": ["local/*"], "max_memory_mb": 256}
    mock_host.full_clean()
    mock_host.save()

    run_worker()

    refused.refresh_from_db()
    assert refused.status == "failed"
    assert refused.last_error == (
        "refused by the container policy: image: 'docker.io/library/busybox:1' is not allowed "
        "on host 'mock' (allowed images: local/*; rule: the host's allowed_images)"
    )
    assert (refused.attempts, refused.execution_id, refused.exit_code) == (1, "", None)
    attempt = JobAttempt.objects.get(job=refused)
    assert (attempt.status, attempt.error) == ("failed", refused.last_error)

    limited.refresh_from_db()
    assert (limited.status, limited.attempts) == ("failed", 1)
    assert limited.last_error == (
        "refused by the container policy: memory_limit: 512 MB is over the maximum of 256 MB "
        "on host 'mock' (rule: the host's max_memory_mb)"
    )
    fine.refresh_from_db()
    assert fine.status == "completed"


@pytest.mark.django_db(transaction=True)
def test_settings_tightened_after_creation_win_at_launch(mock_host, settings):
    settings.CONTAINER_MANAGER = {"ALLOW_PRIVILEGED": True}
    job = create_job("img", ["true"], host=mock_host, privileged=True, max_attempts=5)
    settings.CONTAINER_MANAGER = {}
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.last_error == (
        "refused by the container policy: privileged: privileged containers are not allowed "
        "on host 'mock' (rule: ALLOW_PRIVILEGED is off)"
    )


@pytest.mark.django_db(transaction=True)
def test_a_host_policy_broken_after_creation_fails_its_jobs(mock_host):
    job = create_job("img", ["true"], host=mock_host, max_attempts=2)
    ExecutorHost.objects.filter(pk=mock_host.pk).update(policy={"max_cpu": 1})  # no validation
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.last_error.startswith(
        "refused by the container policy: host: host 'mock' has an invalid policy: "
        "unknown policy key 'max_cpu'"
    )


# -- remote engines ----------------------------------------------------------------------------


def docker_host_for(connection_string, **fields):
    return ExecutorHost(
        name="remote", executor_type="docker", connection_string=connection_string, **fields
    )


@pytest.mark.parametrize(
    ("connection_string", "problem"),
    [
        ("tcp://10.1.2.3:2375", "plain TCP, without TLS"),
        ("tcp://docker.example.com:2375", "plain TCP, without TLS"),
        ("http://10.1.2.3:2375", "plain TCP, without TLS"),
        ("10.1.2.3:2375", "plain TCP, without TLS"),
        ("tcp://[2001:db8::1]:2375", "plain TCP, without TLS"),
        ("tcp://0.0.0.0:2375", "plain TCP, without TLS"),
        ("tcp://127.0.0.1.example.com:2375", "plain TCP, without TLS"),
    ],
)
def test_plain_tcp_to_a_remote_engine_is_refused_naming_host_and_fix(connection_string, problem):
    remote = docker_host_for(connection_string)
    with pytest.raises(ValidationError) as error:
        remote.full_clean()
    assert list(error.value.message_dict) == ["connection_string"]
    message = error.value.message_dict["connection_string"][0]
    assert message.startswith(
        f"Docker host 'remote': {connection_string} is {problem}, to an address that is not "
        "loopback: anyone who can reach that port"
    )
    assert "tls_ca_cert, tls_client_cert and tls_client_key" in message
    assert message.endswith("turn on allow_insecure for this host.")
    docker_host_for(connection_string, allow_insecure=True).full_clean()


@pytest.mark.parametrize(
    "connection_string",
    [
        "",
        "unix:///var/run/docker.sock",
        "tcp://127.0.0.1:2375",
        "tcp://127.3.4.5:2375",
        "tcp://localhost:2375",
        "tcp://LOCALHOST.:2375",
        "tcp://[::1]:2375",
        "tcp://[::ffff:127.0.0.1]:2375",
        "ssh://deploy@docker.example.com",
        "https://docker.example.com:2376",  # TLS, the engine checked against the default CAs
    ],
)
def test_local_and_secured_connections_are_accepted(connection_string):
    docker_host_for(connection_string).full_clean()


def test_tls_to_a_remote_engine_is_accepted_only_when_it_checks_the_engine(tmp_path):
    files = {
        "tls_ca_cert": "/etc/engine/ca.pem",
        "tls_client_cert": "/etc/engine/cert.pem",
        "tls_client_key": "/etc/engine/key.pem",
    }
    docker_host_for("tcp://10.1.2.3:2376", **files).full_clean()
    # A CA alone: the engine is checked; whether it asks for a client certificate is its own
    # business (--tlsverify).
    docker_host_for("tcp://10.1.2.3:2376", tls_ca_cert="/etc/engine/ca.pem").full_clean()

    unverified = docker_host_for(
        "tcp://10.1.2.3:2376", tls_verify=False, **{**files, "tls_ca_cert": ""}
    )
    with pytest.raises(ValidationError) as error:
        unverified.full_clean()
    assert error.value.message_dict["connection_string"][0].startswith(
        "Docker host 'remote': tcp://10.1.2.3:2376 is TLS that does not check the engine's "
        "certificate (tls_verify is off), to an address that is not loopback"
    )
    unverified.allow_insecure = True
    unverified.full_clean()


def test_tls_settings_that_cannot_work_are_named():
    with pytest.raises(ValidationError) as error:
        docker_host_for("tcp://127.0.0.1:2376", tls_client_cert="/c.pem").full_clean()
    assert error.value.message_dict == {
        "tls_client_key": ["a client certificate needs both tls_client_cert and tls_client_key"]
    }
    with pytest.raises(ValidationError) as error:
        docker_host_for(
            "tcp://127.0.0.1:2376", tls_ca_cert="/ca.pem", tls_verify=False
        ).full_clean()
    assert list(error.value.message_dict) == ["tls_verify"]
    assert "tls_ca_cert would be ignored" in error.value.message_dict["tls_verify"][0]
    with pytest.raises(ValidationError) as error:
        docker_host_for("tcp://10.1.2.3").full_clean()
    assert error.value.message_dict["connection_string"][0].startswith(
        "Invalid bind address format: port is required: tcp://10.1.2.3; use unix://"
    )


def test_other_executor_types_are_not_checked_by_docker_rules():
    ExecutorHost(
        name="m", executor_type="mock", connection_string="tcp://10.1.2.3:2375"
    ).full_clean()


def test_the_executor_refuses_an_insecure_engine_whatever_saved_the_host(monkeypatch):
    # Saved without validation; connecting must still refuse, before any packet is sent.
    remote = ExecutorHost.objects.create(
        name="remote", executor_type="docker", connection_string="tcp://10.1.2.3:2375"
    )
    started = time.monotonic()
    health = remote.get_executor().health_check()
    assert not health.healthy
    assert health.message.startswith(
        "Docker host 'remote': tcp://10.1.2.3:2375 is plain TCP, without TLS, to an address "
        "that is not loopback"
    )
    assert time.monotonic() - started < 1
    with pytest.raises(ExecutorUnavailable, match="allow_insecure"):
        launch(create_job("img", host=remote), remote.get_executor())

    # The environment's DOCKER_HOST, for a host with a blank connection string, too.
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.1.2.3:2375")
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    from_env = ExecutorHost.objects.create(name="from-env", executor_type="docker")
    assert (
        "from-env': tcp://10.1.2.3:2375 is plain TCP"
        in from_env.get_executor().health_check().message
    )


def test_allow_insecure_lets_the_executor_try(monkeypatch):
    # TEST-NET-1: nothing answers; the point is that it is tried, not refused.
    remote = ExecutorHost.objects.create(
        name="remote",
        executor_type="docker",
        connection_string="tcp://192.0.2.1:2375",
        executor_config={"timeout": 0.3},
        allow_insecure=True,
    )
    health = remote.get_executor().health_check()
    assert not health.healthy
    assert health.message.startswith("Docker engine 'remote' at tcp://192.0.2.1:2375 ")
    assert "allow_insecure" not in health.message


def test_docker_validate_host_is_the_hook_the_model_calls():
    remote = docker_host_for("tcp://10.1.2.3:2375")
    with pytest.raises(ValidationError) as error:
        DockerExecutor.validate_host(remote.spec())
    assert list(error.value.message_dict) == ["connection_string"]


# -- real containers -----------------------------------------------------------------------------


@pytest.fixture
def no_containers_left(docker_engine):
    yield
    job_ids = {str(pk) for pk in ContainerJob.objects.values_list("pk", flat=True)}
    left = [
        c
        for c in docker_engine.api.containers(all=True, filters={"label": own_labels()})
        if c["Labels"].get("container_manager.job_id") in job_ids
    ]
    for container in left:
        with contextlib.suppress(docker.errors.NotFound):
            docker_engine.api.remove_container(container["Id"], force=True)
    assert not left, f"containers left behind: {[c['Names'] for c in left]}"


@pytest.fixture(scope="session")
def nonroot_image(docker_engine):
    """The test image, usable by a user other than root.

    Images built by older versions of scripts/docker-engine.sh have a root directory of mode
    0700, so no other user can even find /bin/sh there. Then a copy of its files is imported
    under another name (a local import: nothing is pulled).
    """
    try:
        docker_engine.containers.run(TEST_IMAGE, ["true"], user="1000:1000", remove=True)
        yield TEST_IMAGE
        return
    except docker.errors.ContainerError:
        pass
    except docker.errors.APIError as error:
        if "executable file not found" not in str(error):
            raise
    container = docker_engine.containers.create(TEST_IMAGE, ["true"])
    name = "local/busybox-cm-nonroot:latest"
    try:
        docker_engine.api.import_image_from_data(
            b"".join(container.export()),
            repository=name.split(":")[0],
            tag="latest",
            changes=["ENV PATH=/bin", 'CMD ["sh"]'],
        )
    finally:
        container.remove(force=True)
    yield name
    with contextlib.suppress(docker.errors.APIError):
        docker_engine.images.remove(name)


def run(host, command, image=TEST_IMAGE, **fields):
    """Create (through validation), launch, wait, harvest, clean up: (attrs, outcome)."""
    job = create_job(image, command, host=host, **fields)
    executor = host.get_executor()
    execution_id = launch(job, executor)
    try:
        attrs = executor.api.inspect_container(execution_id)
        assert executor.wait(execution_id, 30)
        return attrs, executor.harvest(execution_id)
    finally:
        executor.cleanup(execution_id)


def status_field(stdout, name):
    return next(
        line.split(":", 1)[1].strip() for line in stdout.splitlines() if line.startswith(f"{name}:")
    )


@pytest.mark.docker
@pytest.mark.usefixtures("no_containers_left")
class TestInARealContainer:
    def test_a_default_job_is_confined(self, docker_host):
        attrs, outcome = run(docker_host, ["cat", "/proc/self/status"])
        host_config = attrs["HostConfig"]
        assert host_config["CapDrop"] == ["ALL"]
        assert host_config["CapAdd"] == DEFAULTS["DEFAULT_CAPABILITIES"]
        assert host_config["SecurityOpt"] == ["no-new-privileges:true"]
        assert host_config["PidsLimit"] == DEFAULTS["PIDS_LIMIT"]
        assert host_config["Privileged"] is False
        assert host_config["ReadonlyRootfs"] is False
        assert host_config["PidMode"] == ""
        assert host_config["NetworkMode"] != "host"
        assert attrs["Config"]["User"] == ""

        assert outcome.exit_code == 0, outcome
        assert status_field(outcome.stdout, "NoNewPrivs") == "1"
        expected = capability_mask(DEFAULTS["DEFAULT_CAPABILITIES"])
        assert expected == 0x4FB
        for mask in ("CapEff", "CapPrm", "CapBnd"):
            assert int(status_field(outcome.stdout, mask), 16) == expected, mask
        assert int(status_field(outcome.stdout, "CapAmb"), 16) == 0

    def test_an_allowed_capability_is_added_and_nothing_more(self, docker_host, settings):
        settings.CONTAINER_MANAGER = {"ALLOWED_CAPABILITIES": ["NET_ADMIN"]}
        _, outcome = run(docker_host, ["cat", "/proc/self/status"], capabilities=["CAP_NET_ADMIN"])
        expected = capability_mask([*DEFAULTS["DEFAULT_CAPABILITIES"], "NET_ADMIN"])
        assert int(status_field(outcome.stdout, "CapEff"), 16) == expected

    def test_a_read_only_root_cannot_be_written_and_a_default_one_can(self, docker_host):
        write = ["sh", "-c", "echo x > /x && cat /x"]
        _, outcome = run(docker_host, write, read_only_root=True)
        assert outcome.exit_code != 0
        assert outcome.stderr == "sh: can't create /x: Read-only file system\n"
        _, outcome = run(docker_host, write)
        assert (outcome.exit_code, outcome.stdout) == (0, "x\n")

    def test_run_as_user(self, docker_host, nonroot_image):
        attrs, outcome = run(
            docker_host,
            ["sh", "-c", "id -u; id -g; grep CapEff /proc/self/status"],
            image=nonroot_image,
            run_as_user="1000:1000",
        )
        assert attrs["Config"]["User"] == "1000:1000"
        assert outcome.exit_code == 0, outcome
        assert outcome.stdout.splitlines()[:2] == ["1000", "1000"]
        assert int(status_field(outcome.stdout, "CapEff"), 16) == 0  # not root: none at all

    def test_an_allowed_bind_mount_is_visible_read_only(self, docker_host, settings, tmp_path):
        shared = tmp_path / "shared"
        shared.mkdir()
        (shared / "hello.txt").write_text("from the host\n")
        settings.CONTAINER_MANAGER = {"ALLOWED_MOUNT_SOURCES": [str(tmp_path)]}
        attrs, outcome = run(
            docker_host,
            ["sh", "-c", "cat /data/hello.txt; echo x > /data/new"],
            mounts=[{"source": str(shared) + "/sub/..", "target": "/data"}],
        )
        assert attrs["HostConfig"]["Mounts"] == [
            {"Type": "bind", "Source": str(shared), "Target": "/data", "ReadOnly": True}
        ]
        assert outcome.stdout == "from the host\n"
        assert outcome.exit_code != 0
        assert outcome.stderr == "sh: can't create /data/new: Read-only file system\n"
        assert not (shared / "new").exists()

        _, outcome = run(
            docker_host,
            ["sh", "-c", "echo written > /data/new"],
            mounts=[{"source": str(shared), "target": "/data", "read_only": False}],
        )
        assert outcome.exit_code == 0, outcome
        assert (shared / "new").read_text() == "written\n"

    def test_a_mount_outside_the_allowed_sources_never_reaches_the_engine(
        self, docker_host, settings, tmp_path
    ):
        settings.CONTAINER_MANAGER = {"ALLOWED_MOUNT_SOURCES": [str(tmp_path)]}
        with pytest.raises(ValidationError) as error:
            create_job(
                TEST_IMAGE,
                ["true"],
                host=docker_host,
                mounts=[{"source": f"{tmp_path}/../..", "target": "/data"}],
            )
        assert list(error.value.message_dict) == ["mounts"]

    def test_the_pids_limit_stops_a_fork_loop(self, docker_host, settings):
        forks = ["sh", "-c", "for i in $(seq 50); do sleep 1 & done; wait; echo all forked"]
        settings.CONTAINER_MANAGER = {"PIDS_LIMIT": 10}
        attrs, outcome = run(docker_host, forks)
        assert attrs["HostConfig"]["PidsLimit"] == 10
        assert outcome.exit_code != 0
        assert "can't fork" in outcome.stderr
        assert "all forked" not in outcome.stdout

        settings.CONTAINER_MANAGER = {}  # the default, 512, leaves room for 50
        _, outcome = run(docker_host, forks)
        assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (0, "all forked\n", "")

    def test_host_namespaces_the_policy_allows_reach_the_engine(self, docker_host, settings):
        # (Privileged containers are not started here: an engine that itself runs in a
        # container cannot grant every capability. Their mapping is tested without an engine.)
        settings.CONTAINER_MANAGER = {"ALLOW_HOST_NETWORK": True, "ALLOW_HOST_PID": True}
        count_processes = ["sh", "-c", "ls /proc | grep -c '^[0-9]'"]
        attrs, outcome = run(docker_host, count_processes, host_network=True, host_pid=True)
        assert outcome.exit_code == 0, outcome
        assert attrs["HostConfig"]["NetworkMode"] == "host"
        assert attrs["HostConfig"]["PidMode"] == "host"
        assert int(outcome.stdout) > 3  # the engine's machine's processes, not just its own

    @pytest.mark.django_db(transaction=True)
    def test_a_job_refused_at_launch_starts_no_container(self, docker_host, docker_engine):
        job = create_job(TEST_IMAGE, ["true"], host=docker_host)
        docker_host.policy = {"allowed_images": ["registry.example.com/*"]}
        docker_host.full_clean()
        docker_host.save()
        run_worker("--host", docker_host.name)
        job.refresh_from_db()
        assert job.status == "failed"
        assert job.last_error.startswith("refused by the container policy: image: ")
        assert not docker_engine.api.containers(
            all=True, filters={"label": own_labels(f"container_manager.job_id={job.pk}")}
        )


@pytest.mark.parametrize("network", ["host", "container:abc"])
def test_host_network_cannot_be_smuggled_through_executor_config(db, network):
    host = ExecutorHost(name="sneaky", executor_type="docker", executor_config={"network": network})
    with pytest.raises(ValidationError) as error:
        host.full_clean()
    assert "host_network" in str(error.value.message_dict["executor_config"])


def test_an_executor_called_directly_still_refuses_what_the_policy_forbids(db, settings):
    host = ExecutorHost.objects.create(name="direct", executor_type="mock")
    job = create_job("local/app:1", ["true"], host=host)
    settings.CONTAINER_MANAGER = {"ALLOWED_IMAGES": ["registry.example.com/*"]}
    with pytest.raises(policy.PolicyViolation) as error:
        launch(job, host.get_executor())
    assert "image" in error.value.message_dict
    assert job.execution_id == ""
