"""System checks: ``manage.py check`` (and ``check --deploy``) report a misconfiguration
before the first worker or job trips on it.

Each problem has a stable id (``container_manager.E001``...), a message naming the setting
and what is wrong, and a hint. The checks of ``settings.CONTAINER_MANAGER`` read nothing but
the settings; those that read the database (hosts, workers, stored secrets) run only when
Django passes ``databases`` (``check --database default``, ``migrate``) or under
``--deploy``, and say nothing while the tables do not exist yet.
"""

import math
from collections.abc import Callable
from datetime import timedelta

from cryptography.fernet import Fernet
from django.conf import settings
from django.core import checks
from django.db import DatabaseError, connections
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.module_loading import import_string

from .conf import DEFAULTS
from .executors import BaseExecutor, executor_types
from .models import (
    RETRYABLE_FAILURES,
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    Worker,
)
from .secrets import PREFIX as SEALED_PREFIX
from .states import TERMINAL

SETTINGS_NAME = "CONTAINER_MANAGER"

# Ids, one per kind of problem; never renumbered (SILENCED_SYSTEM_CHECKS names them).
NOT_A_DICT = "container_manager.E001"
UNKNOWN_KEY = "container_manager.E002"
BAD_VALUE = "container_manager.E003"
BAD_ENCRYPTION_KEY = "container_manager.E004"
BAD_EXECUTOR = "container_manager.E005"
BAD_CLOCK = "container_manager.E006"
SQLITE_WORKERS = "container_manager.W001"
DERIVED_ENCRYPTION_KEY = "container_manager.W002"
# What the rows say (hosts, jobs) is a warning, never an error: ``migrate`` runs the database
# checks too, and a host of an unknown type must not stop the migration that would fix it.
MISSING_EXTRA = "container_manager.W003"
UNKNOWN_HOST_TYPE = "container_manager.W004"
NO_WEBHOOK_SECRET = "container_manager.W005"


def _error(id: str, setting: str, problem: str, hint: str) -> checks.CheckMessage:
    return checks.Error(f"{SETTINGS_NAME}['{setting}'] {problem}", hint=hint, id=id)


# -- what each setting must be -----------------------------------------------------------

# A rule: (whether a value passes, what it must be). Bool is refused wherever a number is
# wanted: True is an int to Python, never a sensible interval.


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


POSITIVE_INT = (lambda v: _integer(v) and v > 0, "a positive integer")
NON_NEGATIVE_INT = (lambda v: _integer(v) and v >= 0, "an integer, 0 or more")
POSITIVE = (lambda v: _number(v) and v > 0, "a positive number")
NON_NEGATIVE = (lambda v: _number(v) and v >= 0, "a number, 0 or more")
AT_LEAST_ONE = (lambda v: _number(v) and v >= 1, "a number, 1 or more")
FRACTION = (lambda v: _number(v) and 0 <= v <= 1, "a fraction between 0 and 1")
BOOLEAN = (lambda v: isinstance(v, bool), "True or False")
STRING = (lambda v: isinstance(v, str), "a string")
STRINGS = (
    lambda v: isinstance(v, list | tuple) and all(isinstance(s, str) and s for s in v),
    "a list of non-empty strings",
)
RETRY_KINDS = (
    lambda v: STRINGS[0](v) and set(v) <= set(RETRYABLE_FAILURES),
    f"a list drawn from {', '.join(RETRYABLE_FAILURES)}",
)
OPTIONAL_DAYS = (lambda v: v is None or (_number(v) and v > 0), "None or a positive number")
DOTTED_PATHS = (
    lambda v: isinstance(v, dict) and all(isinstance(p, str) for p in [*v, *v.values()]),
    'a dict of executor type names to dotted paths, e.g. {"mine": "myapp.executors.Mine"}',
)

RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "MAX_OUTPUT_BYTES": POSITIVE_INT,
    "DEFAULT_TIMEOUT_SECONDS": POSITIVE_INT,
    "MAX_TIMEOUT_SECONDS": POSITIVE_INT,
    "MAX_MEMORY_MB": POSITIVE_INT,
    "MAX_CPUS": POSITIVE,
    "MAX_GPUS": NON_NEGATIVE_INT,
    "MAX_COMMAND_BYTES": POSITIVE_INT,
    "MAX_ENV_VARS": POSITIVE_INT,
    "MAX_ENV_BYTES": POSITIVE_INT,
    "DEFAULT_MAX_ATTEMPTS": POSITIVE_INT,
    "POLL_INTERVAL": POSITIVE,
    "MAX_CONCURRENT_JOBS": POSITIVE_INT,
    "LISTEN_NOTIFY": BOOLEAN,
    "CANCEL_CHECK_INTERVAL": POSITIVE,
    "STOP_GRACE_SECONDS": NON_NEGATIVE,
    "HEARTBEAT_INTERVAL": POSITIVE,
    "WORKER_TIMEOUT": POSITIVE,
    "SHUTDOWN_GRACE_SECONDS": NON_NEGATIVE,
    "DATABASE_RETRY_SECONDS": NON_NEGATIVE,
    "ENGINE_OUTAGE_GRACE": NON_NEGATIVE,
    "HEALTH_CHECK_INTERVAL": POSITIVE,
    "HEALTH_RECHECK_BASE": POSITIVE,
    "HEALTH_RECHECK_MAX": POSITIVE,
    "RETRY_BACKOFF_BASE": NON_NEGATIVE,
    "RETRY_BACKOFF_FACTOR": AT_LEAST_ONE,
    "RETRY_BACKOFF_MAX": NON_NEGATIVE,
    "RETRY_JITTER": FRACTION,
    "DEFAULT_RETRY_ON": RETRY_KINDS,
    "ALLOWED_IMAGES": STRINGS,
    "ALLOW_PRIVILEGED": BOOLEAN,
    "ALLOW_HOST_NETWORK": BOOLEAN,
    "ALLOW_HOST_PID": BOOLEAN,
    "ALLOWED_CAPABILITIES": STRINGS,
    "ALLOWED_MOUNT_SOURCES": STRINGS,
    "DEFAULT_CAPABILITIES": STRINGS,
    "PIDS_LIMIT": POSITIVE_INT,
    "SECRET_ENV_PATTERNS": STRINGS,
    "ENCRYPTION_KEYS": STRINGS,
    "CLOCK": STRING,
    "EXECUTORS": DOTTED_PATHS,
    "WEBHOOK_SECRET": STRING,
    "WEBHOOK_TIMEOUT_SECONDS": POSITIVE,
    "WEBHOOK_MAX_ATTEMPTS": POSITIVE_INT,
    "WEBHOOK_BACKOFF_BASE": POSITIVE,
    "WEBHOOK_BACKOFF_MAX": POSITIVE,
    "WEBHOOK_CONCURRENCY": POSITIVE_INT,
    "METRICS_TOKEN": STRING,
    "METRICS_WINDOW_SECONDS": POSITIVE,
    "RETENTION_DAYS": OPTIONAL_DAYS,
    "RETENTION_TRIM_OUTPUT_DAYS": OPTIONAL_DAYS,
}

# Pairs where the first must not exceed the second: (smaller, larger, why).
ORDERED = [
    ("DEFAULT_TIMEOUT_SECONDS", "MAX_TIMEOUT_SECONDS", "jobs given no timeout would be refused"),
    ("HEARTBEAT_INTERVAL", "WORKER_TIMEOUT", "live workers would be presumed dead"),
    ("HEALTH_RECHECK_BASE", "HEALTH_RECHECK_MAX", "the first recheck waits past the longest"),
    ("RETRY_BACKOFF_BASE", "RETRY_BACKOFF_MAX", "the first retry waits past the longest"),
    ("WEBHOOK_BACKOFF_BASE", "WEBHOOK_BACKOFF_MAX", "the first try waits past the longest"),
]


def configured() -> dict:
    """``settings.CONTAINER_MANAGER`` as given (not merged with the defaults)."""
    return getattr(settings, SETTINGS_NAME, {})


def effective() -> dict:
    """Every setting's value: the given one, else the default (unknown keys left out)."""
    given = configured() if isinstance(configured(), dict) else {}
    return {name: given.get(name, default) for name, default in DEFAULTS.items()}


def check_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """The shape of ``CONTAINER_MANAGER``: a dict, known keys, each value of its kind."""
    given = configured()
    if not isinstance(given, dict):
        return [
            checks.Error(
                f"{SETTINGS_NAME} must be a dict, not {type(given).__name__}",
                hint=f"e.g. {SETTINGS_NAME} = {{'MAX_CONCURRENT_JOBS': 8}}",
                id=NOT_A_DICT,
            )
        ]
    found = [
        _error(
            UNKNOWN_KEY,
            str(name),
            "is not a setting of container_manager",
            f"known ones are listed in the README, Configuration: {', '.join(sorted(DEFAULTS))}",
        )
        for name in sorted(set(given) - set(DEFAULTS), key=str)
    ]
    bad = {name for name, (passes, _) in RULES.items() if name in given and not passes(given[name])}
    found += [
        _error(BAD_VALUE, name, f"must be {RULES[name][1]}, not {given[name]!r}", _default(name))
        for name in sorted(bad)
    ]
    values = effective()
    found += [
        _error(
            BAD_VALUE,
            small,
            f"({values[small]}) is more than {large} ({values[large]}): {why}",
            f"lower {small} or raise {large}",
        )
        for small, large, why in ORDERED
        if not {small, large} & bad and values[small] > values[large]
    ]
    return found


def _default(name: str) -> str:
    return f"the default is {DEFAULTS[name]!r}; see the README, Configuration"


def check_encryption_keys(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    keys = effective()["ENCRYPTION_KEYS"]
    if not STRINGS[0](keys):
        return []  # check_settings says what it must be
    found = []
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            # Never echo the key itself: check output ends up in logs.
            found.append(
                _error(
                    BAD_ENCRYPTION_KEY,
                    "ENCRYPTION_KEYS",
                    f"entry {position} is not a Fernet key",
                    "a Fernet key is 32 url-safe base64-encoded bytes; make one with "
                    "cryptography.fernet.Fernet.generate_key()",
                )
            )
    return found


def _import_problem(path: str) -> tuple[object, str]:
    """(what ``path`` names, "") or (None, why it cannot be imported)."""
    try:
        return import_string(path), ""
    except ImportError as error:
        return None, f"cannot be imported ({error})"


def check_executors(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    extra = effective()["EXECUTORS"]
    if not DOTTED_PATHS[0](extra):
        return []
    found = []
    for type_name, path in sorted(extra.items()):
        cls, problem = _import_problem(path)
        if cls is not None and not (isinstance(cls, type) and issubclass(cls, BaseExecutor)):
            problem = "is not a subclass of container_manager.executors.BaseExecutor"
        if problem:
            found.append(
                _error(
                    BAD_EXECUTOR,
                    "EXECUTORS",
                    f"type {type_name!r}: {path} {problem}",
                    "give the dotted path of a BaseExecutor subclass; see the README, "
                    "Adding an executor type",
                )
            )
    return found


def check_clock(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    path = effective()["CLOCK"]
    if not isinstance(path, str):
        return []
    clock, problem = _import_problem(path)
    if clock is not None and not callable(clock):
        problem = "is not callable"
    if not problem:
        return []
    return [
        _error(
            BAD_CLOCK,
            "CLOCK",
            f"{path} {problem}",
            "leave it out (django.utils.timezone.now), or name a function returning an aware "
            "datetime",
        )
    ]


# -- checks that read the database -------------------------------------------------------


def _per_database(check: Callable[[str], list]) -> Callable[..., list]:
    """``check`` run for each database Django passes (none at a plain ``check``; ``check
    --database default`` and ``migrate`` pass theirs); a database whose tables do not
    exist yet (before ``migrate``) has nothing to report."""

    def run(app_configs=None, databases=None, **kwargs) -> list[checks.CheckMessage]:
        found: list[checks.CheckMessage] = []
        for alias in databases or ():
            try:
                found += check(alias)
            except DatabaseError:
                continue
        return found

    run.__name__ = check.__name__
    return run


def _on_deploy(check: Callable[[str], list]) -> Callable[..., list]:
    """``check`` run under ``check --deploy``, on the default database unless Django
    names others."""
    per_database = _per_database(check)

    def run(app_configs=None, databases=None, **kwargs) -> list[checks.CheckMessage]:
        return per_database(databases=databases or ["default"])

    run.__name__ = check.__name__
    return run


def hosts_missing_client(alias: str) -> list[checks.CheckMessage]:
    """Active hosts whose executor type is unknown, or whose backend's client library (a
    cloud extra) is not installed."""
    types = executor_types()
    found: list[checks.CheckMessage] = []
    hosts = ExecutorHost.objects.using(alias).filter(is_active=True).order_by("name")
    for name, type_name in hosts.values_list("name", "executor_type"):
        if type_name not in types:
            found.append(
                checks.Warning(
                    f"executor host {name!r} has executor type {type_name!r}, which is not "
                    "registered",
                    hint=f"registered types: {', '.join(sorted(types))}; add it to "
                    f"{SETTINGS_NAME}['EXECUTORS'] or change the host",
                    id=UNKNOWN_HOST_TYPE,
                )
            )
            continue
        cls, _ = _import_problem(types[type_name])
        if isinstance(cls, type) and issubclass(cls, BaseExecutor) and cls.missing_client():
            found.append(
                checks.Warning(
                    f"executor host {name!r} ({type_name}) cannot run jobs: {cls.missing_client()}",
                    hint="install the extra named, or deactivate the host",
                    id=MISSING_EXTRA,
                )
            )
    return found


def webhooks_unsigned(alias: str) -> list[checks.CheckMessage]:
    """Jobs still to end with a webhook URL while WEBHOOK_SECRET is empty: their deliveries
    would not be sent (a new webhook URL is refused then, but these were saved before)."""
    if effective()["WEBHOOK_SECRET"]:
        return []
    waiting = ContainerJob.objects.using(alias).exclude(webhook_url="").exclude(status__in=TERMINAL)
    if not waiting.exists():
        return []
    return [
        checks.Warning(
            f"{SETTINGS_NAME}['WEBHOOK_SECRET'] is empty while jobs still to end have a "
            "webhook URL: their deliveries will not be sent",
            hint="set WEBHOOK_SECRET to a long random string, shared with the receivers",
            id=NO_WEBHOOK_SECRET,
        )
    ]


def _live_workers(alias: str) -> int:
    since = timezone.now() - timedelta(seconds=float(effective()["WORKER_TIMEOUT"]))
    workers = Worker.objects.using(alias)
    return workers.filter(stopped_at__isnull=True, last_heartbeat__gte=since).count()


def _sqlite_warning(alias: str, problem: str) -> list[checks.CheckMessage]:
    if connections[alias].vendor != "sqlite":
        return []
    return [
        checks.Warning(
            f"database {alias!r} is SQLite and {problem}: SQLite takes one writer at a "
            "time, so workers queue on its lock ('database is locked'), and it has no "
            "instant wake-ups (LISTEN/NOTIFY)",
            hint="use PostgreSQL for more than one worker; see the README, The worker",
            id=SQLITE_WORKERS,
        )
    ]


def sqlite_with_workers(alias: str) -> list[checks.CheckMessage]:
    """SQLite with more than one live worker."""
    live = _live_workers(alias)
    return _sqlite_warning(alias, f"{live} workers are running on it") if live > 1 else []


def sqlite_in_production(app_configs=None, databases=None, **kwargs):
    """Under --deploy, SQLite as the default database whatever runs now: a deployment runs a
    web server and, sooner or later, several workers on it. Where one worker is all there
    will ever be, silence it by id (SILENCED_SYSTEM_CHECKS)."""
    if "default" in (databases or ()):
        try:
            if _live_workers("default") > 1:
                return []  # sqlite_with_workers says so, with the count
        except DatabaseError:
            pass
    return _sqlite_warning("default", "a deployment usually runs several workers on it")


def derived_key_with_secrets(alias: str) -> list[checks.CheckMessage]:
    """Secrets stored while ENCRYPTION_KEYS is empty: sealed with a key derived from
    SECRET_KEY."""
    if effective()["ENCRYPTION_KEYS"]:
        return []
    jobs = ContainerJob.objects.using(alias).annotate(
        env_text=Cast("environment_overrides", TextField())
    )
    templates = EnvironmentVariableTemplate.objects.using(alias)
    sealed = (
        jobs.filter(env_text__contains=SEALED_PREFIX).exists()
        or templates.filter(environment_variables__contains=SEALED_PREFIX).exists()
    )
    if not sealed:
        return []
    return [
        checks.Warning(
            f"{SETTINGS_NAME}['ENCRYPTION_KEYS'] is empty while secrets are stored: they are "
            "encrypted with a key derived from SECRET_KEY, so a new SECRET_KEY (without "
            "SECRET_KEY_FALLBACKS) makes them unreadable",
            hint="set ENCRYPTION_KEYS to [new Fernet key, derived_key(SECRET_KEY)] "
            "(container_manager.secrets.derived_key), then run container_jobs_rotate_secrets; "
            "see the README, Secrets",
            id=DERIVED_ENCRYPTION_KEY,
        )
    ]


# Every check of this app carries this tag: a worker runs these (and Django's model checks)
# at its start, not the URL checks, which would import the project's URLconf and with it
# whatever its views need (an HTTP API's framework: 15 MB a worker).
TAG = "container_manager"


def register_checks() -> None:
    """Register every check (``AppConfig.ready``)."""
    checks.register(check_settings, TAG)
    checks.register(check_encryption_keys, TAG, checks.Tags.security)
    checks.register(check_executors, TAG)
    checks.register(check_clock, TAG)
    checks.register(_per_database(hosts_missing_client), TAG, checks.Tags.database)
    checks.register(_per_database(webhooks_unsigned), TAG, checks.Tags.database)
    checks.register(_per_database(sqlite_with_workers), TAG, checks.Tags.database)
    deploy = {"deploy": True}
    # Not tagged ``database``: it reads the settings, and the database only when one is named
    # (Django 6 leaves database-tagged checks out when none is).
    checks.register(sqlite_in_production, TAG, **deploy)
    checks.register(_on_deploy(derived_key_with_secrets), TAG, checks.Tags.security, **deploy)
