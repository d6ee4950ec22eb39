"""The app's settings: one dict, ``settings.CONTAINER_MANAGER``, read through ``setting()``.

Every key here is documented in the README and read somewhere in the app; nothing else is
accepted, so a misspelt key fails loudly instead of being silently ignored.
"""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULTS = {
    # Per stream (stdout, stderr): what is kept of a job's output; the rest is cut, and marked.
    "MAX_OUTPUT_BYTES": 1_000_000,
    # Job limits: the default timeout, and the upper bounds that validation accepts.
    "DEFAULT_TIMEOUT_SECONDS": 3600,
    "MAX_TIMEOUT_SECONDS": 7 * 24 * 3600,
    "MAX_MEMORY_MB": 256 * 1024,
    "MAX_CPUS": 256,
    # Accelerators (GPUs) one job may ask for; 0 refuses every GPU request.
    "MAX_GPUS": 8,
    # What a job may carry; it is stored in one row and sent to the engine in one request.
    # The argv, all arguments together, in UTF-8 bytes (Linux refuses any one argument or
    # variable over 128 KiB at exec anyway).
    "MAX_COMMAND_BYTES": 128 * 1024,
    # Environment variables of a job: its template's and its overrides (secrets included).
    "MAX_ENV_VARS": 1000,
    # Their names and values together, in UTF-8 bytes (secrets counted in clear).
    "MAX_ENV_BYTES": 128 * 1024,
    "DEFAULT_MAX_ATTEMPTS": 1,
    # Worker defaults; the command line overrides them. Fractions of a second are fine.
    "POLL_INTERVAL": 1.0,
    "MAX_CONCURRENT_JOBS": 4,
    # PostgreSQL: wake workers with LISTEN/NOTIFY the moment a job is queued. Turn off where
    # LISTEN cannot work (e.g. behind a transaction-pooling PgBouncer); polling remains.
    "LISTEN_NOTIFY": True,
    # How often a running job looks for a cancel request made by another process.
    "CANCEL_CHECK_INTERVAL": 1.0,
    # After a stop request, how long a container gets before it is killed.
    "STOP_GRACE_SECONDS": 10,
    # Liveness: workers heartbeat this often; one silent for WORKER_TIMEOUT is presumed dead
    # and its jobs are recovered by a live worker.
    "HEARTBEAT_INTERVAL": 5.0,
    "WORKER_TIMEOUT": 30.0,
    # On SIGTERM/SIGINT: how long running jobs are still followed before they are released
    # for another worker to re-attach to.
    "SHUTDOWN_GRACE_SECONDS": 30.0,
    # Outages. A write of an attempt (running, outcome...) that fails because the database
    # went away is tried again for this long before the worker gives the job to its watchdog.
    "DATABASE_RETRY_SECONDS": 60.0,
    # A running job whose host stops answering is followed through an outage this long; only
    # past it is the attempt failed (its outcome unknown).
    "ENGINE_OUTAGE_GRACE": 300.0,
    # Workers check every active host this often (one worker per check, across all of them).
    "HEALTH_CHECK_INTERVAL": 30.0,
    # An unhealthy host is checked again after BASE seconds, then twice as long each time it
    # still fails, up to MAX; it gets no new jobs until a check passes.
    "HEALTH_RECHECK_BASE": 1.0,
    "HEALTH_RECHECK_MAX": 15.0,
    # Retries: the delay before attempt n+1 is min(MAX, BASE * FACTOR ** (n - 1)), of which a
    # random part up to JITTER (a fraction) is taken off so retries do not stampede.
    "RETRY_BACKOFF_BASE": 5.0,
    "RETRY_BACKOFF_FACTOR": 2.0,
    "RETRY_BACKOFF_MAX": 600.0,
    "RETRY_JITTER": 0.5,
    # What a failed attempt is retried for, when attempts remain (a job may say otherwise).
    "DEFAULT_RETRY_ON": ["launch_error", "exit_code", "timeout", "executor_error", "worker_lost"],
    # Container policy (hosts may tighten it with ExecutorHost.policy; see README, Security).
    # Images a job may use: shell-style patterns, e.g. ["registry.example.com/team/*"].
    "ALLOWED_IMAGES": ["*"],
    # What jobs may ask for; all refused by default.
    "ALLOW_PRIVILEGED": False,
    "ALLOW_HOST_NETWORK": False,
    "ALLOW_HOST_PID": False,
    "ALLOWED_CAPABILITIES": [],
    # Host path prefixes that may be bind-mounted into containers.
    "ALLOWED_MOUNT_SOURCES": [],
    # Every container drops all capabilities but these, and runs with no-new-privileges.
    "DEFAULT_CAPABILITIES": [
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "NET_BIND_SERVICE",
    ],
    # Most processes a container may have (a fork bomb stops there).
    "PIDS_LIMIT": 512,
    # Secrets: environment keys matching these (case-insensitive, shell-style) are secret.
    "SECRET_ENV_PATTERNS": [
        "*PASSWORD*",
        "*PASSWD*",
        "*SECRET*",
        "*TOKEN*",
        "*API_KEY*",
        "*PRIVATE_KEY*",
        "*CREDENTIAL*",
        "*_KEY",
    ],
    # Fernet keys that encrypt secret values at rest: the first encrypts, all decrypt (add a
    # new key first to rotate). Empty: one key derived from Django's SECRET_KEY.
    "ENCRYPTION_KEYS": [],
    # What time it is for schedules: a dotted path to a function returning an aware datetime.
    # Only tests and simulations change it (a clock they can move).
    "CLOCK": "django.utils.timezone.now",
    # Extra executor types: {"type_name": "dotted.path.to.ExecutorClass"}.
    "EXECUTORS": {},
    # Webhooks (see README, Webhooks). The key that signs every delivery (HMAC-SHA256); a
    # job or template naming a webhook URL is refused while it is empty.
    "WEBHOOK_SECRET": "",
    # Seconds one try of a delivery may take, connecting, sending and reading the answer.
    "WEBHOOK_TIMEOUT_SECONDS": 10.0,
    # Tries before a delivery is given up (marked failed); a try is due after
    # min(MAX, BASE * 2 ** (tries - 1)) seconds, of which up to half is taken off at random.
    "WEBHOOK_MAX_ATTEMPTS": 8,
    "WEBHOOK_BACKOFF_BASE": 10.0,
    "WEBHOOK_BACKOFF_MAX": 3600.0,
    # Deliveries one worker makes at once: a slow receiver holds one of them, never the rest.
    "WEBHOOK_CONCURRENCY": 4,
    # Operations (README, Operations). The bearer token that may read the Prometheus metrics
    # (empty: only logged-in users allowed to view jobs may), and the window over which the
    # metrics count and time the jobs that ended.
    "METRICS_TOKEN": "",
    "METRICS_WINDOW_SECONDS": 300.0,
    # Workers delete finished jobs older than this many days, once a day (one worker does
    # it); None: never. The command prune_container_jobs does it by hand.
    "RETENTION_DAYS": None,
    # ... and empty the stored output (stdout, stderr) of finished jobs older than this many
    # days, keeping the rest of the record; None: never.
    "RETENTION_TRIM_OUTPUT_DAYS": None,
}


def setting(name: str):
    if name not in DEFAULTS:
        raise KeyError(f"container_manager has no setting {name!r}")
    overrides = getattr(settings, "CONTAINER_MANAGER", {})
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(
            f"CONTAINER_MANAGER: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"known ones are {', '.join(sorted(DEFAULTS))}"
        )
    return overrides.get(name, DEFAULTS[name])
