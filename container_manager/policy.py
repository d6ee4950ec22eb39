"""The container policy: the one place that decides what a job may ask of the machine it runs on.

The global policy comes from settings (``ALLOWED_IMAGES``, ``MAX_MEMORY_MB``, ``MAX_CPUS``,
``MAX_GPUS``, ``MAX_TIMEOUT_SECONDS``, ``ALLOW_PRIVILEGED``, ``ALLOW_HOST_NETWORK``,
``ALLOW_HOST_PID``,
``ALLOWED_CAPABILITIES``, ``ALLOWED_MOUNT_SOURCES``). A host's ``policy`` (a JSON object with
the same keys in lowercase) can only tighten it: its limits and lists are combined with the
global ones (smaller maximum, both image lists, intersection of capabilities and mount
sources), and it can only turn off what settings allow.

``check_job`` is called when a job is validated (``ContainerJob.clean``: the API, the admin
and the CLI) and again by the worker just before launching it, so a policy tightened in
between wins. ``confinement`` turns an allowed job into what an executor must set up; every
executor maps that one description to its backend (see the README, Security).
"""

from __future__ import annotations

import enum
import fnmatch
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from django.core.exceptions import ImproperlyConfigured, ValidationError

from .conf import setting
from .exceptions import PolicyViolation
from .fields import json_depth_error, short_repr
from .spec import Confinement, Mount

if TYPE_CHECKING:
    from .models import ContainerJob, ExecutorHost


RUN_AS_USER = re.compile(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$")
CAPABILITY = re.compile(r"^[A-Z][A-Z_]*$")
MOUNT_KEYS = ("source", "target", "read_only")


# -- shapes ------------------------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _number(value) -> str:
    """``2`` for 2 or 2.0, ``0.5`` for 0.5, never ``1e+06``."""
    if isinstance(value, float) and not value.is_integer():
        return repr(value)
    return str(int(value))


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive_number(value) -> bool:
    return _is_number(value) and value > 0 and value != float("inf")


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)


def capability_name(name: str) -> str | None:
    """``"NET_ADMIN"`` for ``"NET_ADMIN"`` or ``"CAP_NET_ADMIN"``; None if not a name."""
    if not isinstance(name, str):
        return None
    bare = name.removeprefix("CAP_")
    return bare if CAPABILITY.match(bare) else None


def _checked_capability(name: str) -> str:
    """``capability_name`` of a name that ``_capabilities`` (or ``check_job``) has accepted."""
    bare = capability_name(name)
    assert bare is not None, f"{name!r} is not a capability name; its shape was checked"
    return bare


def _capabilities(value) -> bool:
    return isinstance(value, list) and all(capability_name(v) for v in value)


def normalize_path(path: str) -> str:
    """An absolute path with ``.``, ``..`` and repeated or trailing slashes resolved."""
    normalized = posixpath.normpath(path)
    # POSIX keeps a leading "//" as it is; for a bind mount it means the same as "/".
    return "/" + normalized.lstrip("/")


def _absolute_paths(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) and v.startswith("/") and "\x00" not in v for v in value
    )


def is_under(path: str, prefix: str) -> bool:
    """Whether normalised ``path`` is ``prefix`` or inside it (``/data2`` is not in ``/data``)."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


# key in a host's policy: (setting it tightens, check of its shape, what the shape should be)
POLICY_KEYS = {
    "allowed_images": (
        "ALLOWED_IMAGES",
        _strings,
        'a list of image patterns, e.g. ["registry.example.com/team/*"]',
    ),
    "max_memory_mb": ("MAX_MEMORY_MB", _positive_int, "a whole number of MB greater than 0"),
    "max_cpus": ("MAX_CPUS", _positive_number, "a number of cores greater than 0"),
    "max_gpus": ("MAX_GPUS", _whole_number, "a whole number of GPUs, 0 or more"),
    "max_timeout_seconds": (
        "MAX_TIMEOUT_SECONDS",
        _positive_int,
        "a whole number of seconds greater than 0",
    ),
    "allow_privileged": ("ALLOW_PRIVILEGED", lambda v: isinstance(v, bool), "true or false"),
    "allow_host_network": ("ALLOW_HOST_NETWORK", lambda v: isinstance(v, bool), "true or false"),
    "allow_host_pid": ("ALLOW_HOST_PID", lambda v: isinstance(v, bool), "true or false"),
    "allowed_capabilities": (
        "ALLOWED_CAPABILITIES",
        _capabilities,
        'a list of capability names, e.g. ["NET_ADMIN"]',
    ),
    "allowed_mount_sources": (
        "ALLOWED_MOUNT_SOURCES",
        _absolute_paths,
        'a list of absolute host paths, e.g. ["/srv/data"]',
    ),
}
MAXIMUMS = ("max_memory_mb", "max_cpus", "max_gpus", "max_timeout_seconds")
SWITCHES = ("allow_privileged", "allow_host_network", "allow_host_pid")


def _global(key: str):
    name, check, shape = POLICY_KEYS[key]
    value = setting(name)
    if not check(value):
        raise ImproperlyConfigured(f"CONTAINER_MANAGER[{name!r}] must be {shape}, not {value!r}")
    return value


# -- the effective policy ------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One layer of the policy for one key: its value, and how to name it in a message."""

    # Of the shape POLICY_KEYS gives its key (checked before a Rule is made): a list of
    # strings, a number or a bool.
    value: Any
    name: str  # "ALLOW_PRIVILEGED" or "the host's allow_privileged"


@dataclass(frozen=True)
class EffectivePolicy:
    """What jobs on one host may do: the settings, tightened by the host's policy."""

    host_name: str | None
    rules: dict[str, tuple[Rule, ...]]  # per key: the global rule, then the host's if it has one

    @property
    def allowed_images(self) -> list[list[str]]:
        """Pattern lists; an image must match one pattern of every list."""
        return [list(rule.value) for rule in self.rules["allowed_images"]]

    @property
    def max_memory_mb(self) -> int:
        return min(rule.value for rule in self.rules["max_memory_mb"])

    @property
    def max_cpus(self) -> float:
        return min(rule.value for rule in self.rules["max_cpus"])

    @property
    def max_gpus(self) -> int:
        return min(rule.value for rule in self.rules["max_gpus"])

    @property
    def max_timeout_seconds(self) -> int:
        return min(rule.value for rule in self.rules["max_timeout_seconds"])

    @property
    def allow_privileged(self) -> bool:
        return all(rule.value for rule in self.rules["allow_privileged"])

    @property
    def allow_host_network(self) -> bool:
        return all(rule.value for rule in self.rules["allow_host_network"])

    @property
    def allow_host_pid(self) -> bool:
        return all(rule.value for rule in self.rules["allow_host_pid"])

    @property
    def allowed_capabilities(self) -> list[str]:
        layers = [
            [_checked_capability(c) for c in r.value] for r in self.rules["allowed_capabilities"]
        ]
        return [c for c in dict.fromkeys(layers[0]) if all(c in layer for layer in layers)]

    @property
    def allowed_mount_sources(self) -> list[str]:
        """Prefixes under which a source is allowed by every layer."""
        layers = [
            [normalize_path(p) for p in rule.value] for rule in self.rules["allowed_mount_sources"]
        ]
        allowed = layers[0]
        for layer in layers[1:]:
            narrowed = []
            for outer in allowed:
                for other in layer:
                    if is_under(other, outer):
                        narrowed.append(other)
                    elif is_under(outer, other):
                        narrowed.append(outer)
            allowed = narrowed
        return list(dict.fromkeys(allowed))

    def refusing(self, key: str, allows) -> Rule | None:
        """The first layer whose value does not ``allows``, or None if every one does."""
        return next((rule for rule in self.rules[key] if not allows(rule.value)), None)


def effective_policy(host: ExecutorHost | None) -> EffectivePolicy:
    """The global policy from settings, tightened by ``host.policy``.

    A host policy that is not valid (it was saved without validation) raises
    PolicyViolation on ``host``: an unreadable policy must not let anything through.
    """
    rules: dict[str, tuple[Rule, ...]] = {
        key: (Rule(_global(key), POLICY_KEYS[key][0]),) for key in POLICY_KEYS
    }
    if host is None:
        return EffectivePolicy(None, rules)
    try:
        _check_shape(host.policy)
    except ValidationError as error:
        raise PolicyViolation(
            {"host": f"host {host.name!r} has an invalid policy: {'; '.join(error.messages)}"}
        ) from None
    for key, value in (host.policy or {}).items():
        rules[key] += (Rule(value, f"the host's {key}"),)
    return EffectivePolicy(host.name, rules)


def _check_shape(policy) -> None:
    if policy is None or policy == {}:
        return
    if not isinstance(policy, dict):
        raise ValidationError(
            'must be a JSON object, e.g. {"allowed_images": ["registry.example.com/team/*"]}'
        )
    errors = []
    for key, value in policy.items():
        if key not in POLICY_KEYS:
            known = ", ".join(POLICY_KEYS)
            errors.append(f"unknown policy key {short_repr(key)} (known: {known})")
            continue
        _, check, shape = POLICY_KEYS[key]
        if not check(value):
            errors.append(f"{key!r} must be {shape}, not {short_repr(value)}")
    if errors:
        raise ValidationError(errors)


def validate_host_policy(policy) -> None:
    """Validate an ``ExecutorHost.policy``: keys, types, and that it only tightens.

    Raises ValidationError with one message per problem, each naming the key.
    """
    _check_shape(policy)
    if not policy:
        return
    errors = []
    tighten_only = "a host's policy can only tighten the settings, never loosen them"
    for key, value in policy.items():
        name = POLICY_KEYS[key][0]
        current = _global(key)
        if key in SWITCHES and value and not current:
            errors.append(f"{key!r} cannot be true: {name} is off in settings, and {tighten_only}")
        elif key in MAXIMUMS and value > current:
            errors.append(
                f"{key!r} ({_number(value)}) is above {name} ({_number(current)}) in settings; "
                f"{tighten_only}"
            )
        elif key == "allowed_capabilities":
            allowed = {_checked_capability(c) for c in current}
            extra = [c for c in value if capability_name(c) not in allowed]
            if extra:
                errors.append(
                    f"{key!r} lists {', '.join(extra)}, which {name} in settings does not allow "
                    f"(allowed: {', '.join(sorted(allowed)) or 'none'}); {tighten_only}"
                )
        elif key == "allowed_mount_sources":
            prefixes = [normalize_path(p) for p in current]
            extra = [p for p in value if not any(is_under(normalize_path(p), g) for g in prefixes)]
            if extra:
                errors.append(
                    f"{key!r} lists {', '.join(extra)}, which is not under {name} in settings "
                    f"({', '.join(prefixes) or 'none'}); {tighten_only}"
                )
    if errors:
        raise ValidationError(errors)


# -- checking a job --------------------------------------------------------------------------


def _listed(values) -> str:
    return ", ".join(str(v) for v in values) or "none"


class _Default(enum.Enum):
    ITS_HOST = "the job's own host"


_ITS_HOST = _Default.ITS_HOST


def check_job(
    job: ContainerJob, host: ExecutorHost | None | Literal[_Default.ITS_HOST] = _ITS_HOST
) -> None:
    """Raise PolicyViolation({field: [messages]}) for everything ``job`` may not do on
    ``host`` (by default the job's own host; None: the settings alone).

    Each message names the rule that refuses it: a setting (``ALLOW_PRIVILEGED``) or the
    host's policy key (``the host's allowed_images``). Fields that are not even well formed
    (mounts, capabilities, run_as_user) are reported as such.
    """
    if host is _ITS_HOST:
        host = job.host
    policy = effective_policy(host)
    on_host = f" on host {host.name!r}" if host is not None else ""
    errors: dict[str, list[str]] = {}

    def refuse(field, message):
        errors.setdefault(field, []).append(message)

    image = job.image
    if isinstance(image, str) and image.strip():
        rule = policy.refusing(
            "allowed_images", lambda patterns: any(fnmatch.fnmatchcase(image, p) for p in patterns)
        )
        if rule:
            refuse(
                "image",
                f"{short_repr(image)} is not allowed{on_host} "
                f"(allowed images: {_listed(rule.value)}; rule: {rule.name})",
            )

    for field, key, unit in (
        ("memory_limit", "max_memory_mb", " MB"),
        ("cpu_limit", "max_cpus", " cores"),
        ("gpus", "max_gpus", " GPUs"),
        ("timeout_seconds", "max_timeout_seconds", " s"),
    ):
        value = getattr(job, field)
        if not _is_number(value):
            continue  # unset, or not a number: the field's own validation says so
        # The tightest maximum exceeded is the one to name.
        over = [rule for rule in policy.rules[key] if value > rule.value]
        if over:
            rule = min(over, key=lambda rule: rule.value)
            refuse(
                field,
                f"{_number(value)}{unit} is over the maximum of {_number(rule.value)}{unit}"
                f"{on_host} (rule: {rule.name})",
            )

    for field, key, what in (
        ("privileged", "allow_privileged", "privileged containers are"),
        ("host_network", "allow_host_network", "the host's network namespace is"),
        ("host_pid", "allow_host_pid", "the host's PID namespace is"),
    ):
        if getattr(job, field):
            rule = policy.refusing(key, bool)
            if rule:
                state = "off" if rule.name.isupper() else "false"
                refuse(field, f"{what} not allowed{on_host} (rule: {rule.name} is {state})")

    for field, check in (("capabilities", _check_capabilities), ("mounts", _check_mounts)):
        value = getattr(job, field)
        # Even saved around validation, a value nested too deep is refused, not skipped: the
        # launch must not go ahead with a field the policy could not read.
        if problem := json_depth_error(value):
            refuse(field, problem)
        else:
            check(value, policy, on_host, refuse)

    user = job.run_as_user
    if user and not (isinstance(user, str) and RUN_AS_USER.match(user)):
        refuse(
            "run_as_user",
            f"{short_repr(user)} is not a user[:group] (names or numbers of letters, digits, "
            "'_', '.', '-'), e.g. '1000:1000' or 'nobody'",
        )

    if errors:
        raise PolicyViolation(errors)


def _check_capabilities(capabilities, policy, on_host, refuse) -> None:
    if capabilities in (None, []):
        return
    if not isinstance(capabilities, list):
        refuse(
            "capabilities",
            'must be a list of capability names, e.g. ["NET_ADMIN"], '
            f"not {short_repr(capabilities)}",
        )
        return
    for requested in capabilities:
        name = capability_name(requested)
        if name is None:
            refuse(
                "capabilities",
                f"{short_repr(requested)} is not a capability name (upper-case letters and '_', "
                "optionally with a CAP_ prefix, e.g. 'NET_ADMIN')",
            )
            continue
        rule = policy.refusing(
            "allowed_capabilities",
            lambda allowed, name=name: name in {capability_name(c) for c in allowed},
        )
        if rule:
            allowed = [capability_name(c) for c in rule.value]
            refuse(
                "capabilities",
                f"{short_repr(name)} is not allowed{on_host} (allowed: {_listed(allowed)}; "
                f"rule: {rule.name})",
            )


def _check_mounts(mounts, policy, on_host, refuse) -> None:
    if mounts in (None, []):
        return
    shape = '{"source": "/host/path", "target": "/in/container", "read_only": true}'
    if not isinstance(mounts, list):
        refuse("mounts", f"must be a list of objects like {shape}, not {short_repr(mounts)}")
        return
    targets = set()
    for number, mount in enumerate(mounts, 1):
        where = f"mount {number}"
        if not isinstance(mount, dict):
            refuse("mounts", f"{where} must be an object like {shape}, not {short_repr(mount)}")
            continue
        unknown = sorted(set(mount) - set(MOUNT_KEYS))
        if unknown:
            known = ", ".join(MOUNT_KEYS)
            refuse("mounts", f"{where} has unknown key(s) {', '.join(unknown)} (known: {known})")
        paths = {}
        for key in ("source", "target"):
            path = mount.get(key)
            if not (isinstance(path, str) and path.startswith("/") and "\x00" not in path):
                refuse(
                    "mounts", f"{where}: {key!r} must be an absolute path, not {short_repr(path)}"
                )
            else:
                paths[key] = normalize_path(path)
        read_only = mount.get("read_only", True)
        if not isinstance(read_only, bool):
            refuse(
                "mounts", f"{where}: 'read_only' must be true or false, not {short_repr(read_only)}"
            )
        target = paths.get("target")
        if target == "/":
            refuse("mounts", f"{where}: cannot mount over the container's root '/'")
        elif target in targets:
            refuse(
                "mounts", f"{where}: {short_repr(target)} is already the target of another mount"
            )
        elif target:
            targets.add(target)
        source = paths.get("source")
        if source is None:
            continue
        rule = policy.refusing(
            "allowed_mount_sources",
            lambda prefixes, source=source: any(
                is_under(source, normalize_path(p)) for p in prefixes
            ),
        )
        if rule:
            shown = short_repr(mount["source"])
            if source != mount["source"]:
                shown += f" (that is, {short_repr(source)})"
            prefixes = [normalize_path(p) for p in rule.value]
            refuse(
                "mounts",
                f"{shown} is not under an allowed mount source{on_host} "
                f"(allowed: {_listed(prefixes)}; rule: {rule.name})",
            )


def refusal(error: ValidationError) -> str:
    """A PolicyViolation as one line for a job's ``last_error``."""
    details = "; ".join(
        f"{field}: {message}"
        for field, messages in error.message_dict.items()
        for message in messages
    )
    return f"refused by the container policy: {details}"


# -- what an executor sets up ----------------------------------------------------------------


def confinement(job: ContainerJob) -> Confinement:
    """What an executor must set up for ``job`` (which ``check_job`` has allowed)."""
    defaults = setting("DEFAULT_CAPABILITIES")
    if not _capabilities(defaults):
        raise ImproperlyConfigured(
            f"CONTAINER_MANAGER['DEFAULT_CAPABILITIES'] must be a list of capability names, "
            f"not {defaults!r}"
        )
    pids_limit = setting("PIDS_LIMIT")
    if not _positive_int(pids_limit):
        raise ImproperlyConfigured(
            f"CONTAINER_MANAGER['PIDS_LIMIT'] must be a whole number greater than 0, "
            f"not {pids_limit!r}"
        )
    capabilities = [_checked_capability(c) for c in [*defaults, *(job.capabilities or [])]]
    return Confinement(
        user=job.run_as_user or None,
        read_only_root=bool(job.read_only_root),
        privileged=bool(job.privileged),
        host_network=bool(job.host_network),
        host_pid=bool(job.host_pid),
        add_capabilities=tuple(dict.fromkeys(capabilities)),
        pids_limit=pids_limit,
        mounts=tuple(
            Mount(
                source=normalize_path(m["source"]),
                target=normalize_path(m["target"]),
                read_only=m.get("read_only", True),
            )
            for m in job.mounts or []
        ),
    )
