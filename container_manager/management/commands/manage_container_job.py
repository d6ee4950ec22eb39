"""Operate jobs from a shell: create, list, show, logs, release, cancel, retry, the hosts, many
jobs at once (bulk), job arrays and schedules.

A thin layer: arguments are parsed here, the work is done by ``container_manager.api`` and
the models, and the result is printed for people or, with ``--json``, for scripts (the JSON
comes from ``container_manager.serializers``, as everywhere else).

Secret environment values are shown masked (``••••••``); ``show --reveal-secrets`` shows them
to a user (``--user``) who has ``container_manager.reveal_secrets``. With ``--user NAME`` the
command acts as that user and checks the permission each subcommand needs; without it, it acts
as the server's operator, with every right but revealing secrets.
"""

import argparse
import json
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from container_manager import api, scheduling
from container_manager import bulk_operations as bulk
from container_manager.executors import ExecutorError
from container_manager.fields import short_repr
from container_manager.models import ContainerJob, ExecutorHost, JobArray, Schedule, as_job_id
from container_manager.permissions import ADD, CANCEL, RETRY, REVEAL, VIEW, Needed, refusal
from container_manager.routing import describe_request
from container_manager.secrets import SecretError
from container_manager.serializers import (
    array_to_dict,
    host_to_dict,
    job_to_dict,
    schedule_to_dict,
    validation_error_lines,
)
from container_manager.states import TERMINAL, InvalidTransition, JobStatus
from container_manager.units import human_bytes, human_duration, local_time

if TYPE_CHECKING:
    from container_manager.models import HostWithLoad

DEFAULT_LIST_LIMIT = 50

# create's options that are plain ContainerJob fields: option dest -> field name.
CREATE_FIELDS = {
    "name": "name",
    "memory": "memory_limit",
    "cpus": "cpu_limit",
    "gpus": "gpus",
    "timeout": "timeout_seconds",
    "priority": "priority",
    "max_attempts": "max_attempts",
    "run_as": "run_as_user",
    "executor_type": "executor_type",
    "webhook_url": "webhook_url",
}
# Switches that loosen the container's confinement (each must be allowed by the policy).
CONFINEMENT_SWITCHES = ("read_only_root", "privileged", "host_network", "host_pid")


def parse_mount(text: str) -> dict:
    """SOURCE:TARGET[:ro|rw] as the job's mount record (read-only unless :rw)."""
    parts = text.split(":")
    if len(parts) == 2:
        parts.append("ro")
    if len(parts) != 3 or parts[2] not in ("ro", "rw") or not all(parts[:2]):
        raise CommandError(f"mounts: expected SOURCE:TARGET[:ro|rw], got {short_repr(text)}")
    return {"source": parts[0], "target": parts[1], "read_only": parts[2] == "ro"}


def invalid(error: ValidationError) -> CommandError:
    """A CommandError naming each bad field and what is wrong with it."""
    return CommandError("; ".join(validation_error_lines(error)))


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


positive_int.__name__ = "positive integer"  # what argparse calls it in its error message


# What a user given with --user needs for a subcommand: (permission, what it lets them do).
# No permission of its own (one would need a migration): releasing changes a held job.
RELEASE = ("container_manager.change_containerjob", "release jobs")
CHECK_HOSTS = ("container_manager.change_executorhost", "check hosts")
SCHEDULE_PERMISSIONS = {
    "add": ("container_manager.add_schedule", "add schedules"),
    "pause": ("container_manager.change_schedule", "pause schedules"),
    "resume": ("container_manager.change_schedule", "resume schedules"),
    "remove": ("container_manager.delete_schedule", "remove schedules"),
}
# Moving a job that has not run to another host changes it, as editing it would.
REROUTE = ("container_manager.change_containerjob", "reroute jobs")
DELETE = ("container_manager.delete_containerjob", "delete jobs")


class BulkAction(NamedTuple):
    permission: tuple[str, str]
    run: Callable[..., bulk.BulkResult]  # the bulk_operations function
    done: str  # what it did, in the summary


BULK_ACTIONS = {
    "cancel": BulkAction(CANCEL, bulk.cancel_jobs, "Cancelled"),
    "retry": BulkAction(RETRY, bulk.retry_jobs, "Queued again"),
    "release": BulkAction(RELEASE, bulk.release_jobs, "Released"),
    "reroute": BulkAction(REROUTE, bulk.reroute_jobs, "Rerouted"),
    "duplicate": BulkAction(ADD, bulk.duplicate_jobs, "Duplicated"),
    "delete": BulkAction(DELETE, bulk.delete_jobs, "Deleted"),
}
PROGRESS_BAR_WIDTH = 30

BULK_CREATE_HELP = """\
Create many jobs from one spec and a file of parameters: a job per row, the spec with the
row's argv, env and name. Every row is checked first; if the spec or any row is invalid,
nothing is created and each problem is listed by its line (CSV, JSON Lines) or item (JSON).

The spec (--spec) is a JSON object of create_job's arguments: image, command, host, env,
env_template, secrets, hold, and the job's fields (name, memory_limit, cpu_limit, gpus,
timeout_seconds, priority, scheduled_for, max_attempts, working_dir, executor_type,
host_labels, retry_on, run_as_user, capabilities, mounts, ...). For example:
  {"image": "alpine:3.20", "host": "local", "memory_limit": 64, "env": {"MODE": "fast"}}

The parameters (--params; '-' reads standard input), one job each:
  json   an array of objects: [{"argv": ["resize", "a.png"], "env": {"SIZE": "64"},
         "name": "a"}, ...]; each key is optional.
  jsonl  one such object per line (blank lines are skipped).
  csv    a header row, then a row per job. Column argv is a shell-quoted command line
         (split like a shell would, no shell runs it), column name the job's name, and
         every other column an environment variable: its name, its value in each row.
         An empty argv or name cell keeps the spec's.
argv replaces the spec's command; env is merged over the spec's env; name replaces its name.
The format comes from the file's extension (.json, .jsonl, .ndjson, .csv) unless --format
says it.

With --array the jobs are one job array, a member per row: each gets JOB_ARRAY_INDEX (its
row's place, from 0) and JOB_ARRAY_SIZE in its environment; --parallelism K lets at most K
of them launch or run at once. See 'manage_container_job array --help'.
"""


def parse_env(pairs: list[str], field: str = "env") -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValidationError({field: f"expected KEY=VALUE, got {short_repr(key)}"})
        env[key] = value
    return env


JOB_ID_HELP = "A job id, or the execution id of one of its attempts."


def when(value) -> str:
    return f"{local_time(value)} {timezone.localtime(value):%Z}" if value else "-"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]


def clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class Command(BaseCommand):
    help = (
        "Create, inspect and control container jobs, and list or check executor hosts. "
        "Run 'manage_container_job SUBCOMMAND --help' for each subcommand's options."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parse_args = parser.parse_args

        def parse_with_argv_after_double_dash(args=None, namespace=None):
            """Everything after the first ``--`` is the job's argv, as it is. argparse alone
            strips ``--`` at the first level of subcommands only, so under ``schedule add``
            an argv like ``sh -c ...`` would be read as options."""
            args = list(sys.argv[2:] if args is None else args)
            if "--" not in args:
                return parse_args(args, namespace)
            cut = args.index("--")
            options = parse_args(args[:cut], namespace)
            if not hasattr(options, "argv"):
                parser.error(f"this subcommand takes no argv after '--': {args[cut + 1 :]}")
            if options.argv:
                parser.error(f"give the argv after '--' only, not before it: {options.argv}")
            options.argv = args[cut + 1 :]
            return options

        parser.parse_args = parse_with_argv_after_double_dash  # type: ignore[method-assign]
        return parser

    def add_arguments(self, parser):
        user_help = (
            "Act as this user: the subcommand needs that user's permission (create: "
            "add_containerjob, release: change_containerjob, cancel, retry, hosts --check: "
            "change_executorhost, show --reveal-secrets: reveal_secrets; bulk: the action's, "
            "reroute: change_containerjob, duplicate: add_containerjob, delete: "
            "delete_containerjob; array cancel and retry: those of cancel and retry). Without "
            "it: the server's operator."
        )
        parser.add_argument("--user", metavar="USERNAME", help=user_help)
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        create = sub.add_parser(
            "create",
            help="Create a job (queued, or pending with --hold).",
            description="Create a job. The command is an argv list after '--', passed to the "
            "container as it is (no shell unless you run one, e.g. -- sh -c '...').",
        )
        self._add_job_options(create)
        create.add_argument(
            "--hold", action="store_true", help="Create it pending: it is not run until queued."
        )
        create.add_argument(
            "--depends-on",
            action="append",
            default=[],
            metavar="JOB_ID",
            help="A job that must complete first (repeatable); if it fails, this one fails unrun.",
        )
        create.add_argument(
            "--array",
            type=positive_int,
            metavar="N",
            help="Create a job array of N members instead of one job: each runs with "
            "JOB_ARRAY_INDEX (0 to N-1) and JOB_ARRAY_SIZE in its environment.",
        )
        self._parallelism_option(create)
        self._json_flag(create)

        listing = sub.add_parser("list", help="List jobs, newest first.")
        listing.add_argument("--status", choices=JobStatus.values)
        listing.add_argument("--host", metavar="NAME", help="Only this host's jobs.")
        listing.add_argument(
            "--array", metavar="ARRAY_ID", help="Only this job array's members, by index."
        )
        self._list_options(listing, "jobs")

        show = sub.add_parser("show", help="Everything about one job and its attempts.")
        show.add_argument("job_id", metavar="JOB_ID", help=JOB_ID_HELP)
        show.add_argument(
            "--reveal-secrets",
            action="store_true",
            help="Show secret environment values in clear (needs --user with "
            "container_manager.reveal_secrets).",
        )
        self._json_flag(show)

        logs = sub.add_parser(
            "logs",
            help="Print a job's output (stored stdout, then stderr).",
            description="Print a job's stored output. With --follow, stream a running job's "
            "output (stdout and stderr together) until it ends; a job that has not started "
            "yet is waited for.",
        )
        logs.add_argument("job_id", metavar="JOB_ID", help=JOB_ID_HELP)
        only = logs.add_mutually_exclusive_group()
        only.add_argument("--stdout", dest="only_stdout", action="store_true", help="Only stdout.")
        only.add_argument("--stderr", dest="only_stderr", action="store_true", help="Only stderr.")
        logs.add_argument("--follow", "-f", action="store_true", help="Stream until the job ends.")

        release = sub.add_parser(
            "release",
            help="Queue held (pending) jobs to run.",
            description="Queue held (pending) jobs, created with --hold, to run: now, or at "
            "their scheduled time if it is still ahead. Each job is released or refused on "
            "its own; the command fails if any was refused.",
        )
        release.add_argument("job_ids", nargs="+", metavar="JOB_ID")
        self._json_flag(release)

        for name, text in [
            ("cancel", "Cancel a job: at once if not running, else its worker stops it."),
            ("retry", "Queue a failed, timed-out or cancelled job again."),
        ]:
            action = sub.add_parser(name, help=text, description=text)
            action.add_argument("job_id", metavar="JOB_ID")
            self._json_flag(action)

        hosts = sub.add_parser(
            "hosts",
            help="List executor hosts; --check asks each one for its health.",
            description="List executor hosts. With --check, ask each host whether it can run "
            "jobs, record the answer, and exit non-zero if any host is unhealthy.",
        )
        hosts.add_argument("--check", action="store_true", help="Run a health check on each.")
        self._json_flag(hosts)

        bulk_actions = self._add_bulk_arguments(sub)
        array_actions = self._add_array_arguments(sub)
        schedule_actions = self._add_schedule_arguments(sub)

        # --user may also follow the subcommand; it is one option either way.
        for subparser in [*sub.choices.values(), *bulk_actions, *array_actions, *schedule_actions]:
            subparser.add_argument(
                "--user", metavar="USERNAME", default=argparse.SUPPRESS, help=user_help
            )

    def _add_bulk_arguments(self, sub) -> list:
        """The ``bulk`` subcommand; returns its actions' parsers."""
        bulk_parser = sub.add_parser(
            "bulk",
            help="Create many jobs from a spec and a parameters file, or act on many jobs.",
            description="Create many jobs from a spec and a parameters file, or cancel, retry, "
            "release, reroute, duplicate or delete many jobs. Each job is done or refused on "
            "its own; the command fails, naming each refusal, if any was refused.",
        )
        actions = bulk_parser.add_subparsers(dest="bulk_action", required=True, metavar="ACTION")
        create = actions.add_parser(
            "create",
            help="Create a job per row of a parameters file, from one spec.",
            description=BULK_CREATE_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        create.add_argument("--spec", required=True, metavar="FILE", help="The spec: JSON.")
        create.add_argument(
            "--params", required=True, metavar="FILE", help="The rows ('-': standard input)."
        )
        create.add_argument(
            "--format", choices=["json", "jsonl", "csv"], help="Of --params (default: its name's)."
        )
        create.add_argument(
            "--hold", action="store_true", help="Create them pending: not run until released."
        )
        create.add_argument(
            "--array", action="store_true", help="Create them as one job array, a member per row."
        )
        self._parallelism_option(create)
        self._json_flag(create)
        for name, text in [
            ("cancel", "Cancel jobs: at once if not running, else their workers stop them."),
            ("retry", "Queue failed, timed-out or cancelled jobs again."),
            ("release", "Queue held (pending) jobs to run."),
            ("reroute", "Run jobs on another host: waiting ones move, finished ones re-queue."),
            ("duplicate", "Run jobs again: a new queued job with each one's spec."),
            ("delete", "Delete jobs and their history (not those running: cancel them first)."),
        ]:
            action = actions.add_parser(name, help=text, description=text)
            if name == "reroute":
                action.add_argument(
                    "--host", required=True, metavar="NAME", help="The host or fallback chain."
                )
            action.add_argument("job_ids", nargs="*", metavar="JOB_ID")
            action.add_argument(
                "--ids-from",
                metavar="FILE",
                help="Read job ids from FILE, one per line ('-': standard input).",
            )
            self._json_flag(action)
        return list(actions.choices.values())

    def _add_array_arguments(self, sub) -> list:
        """The ``array`` subcommand; returns its actions' parsers."""
        array_parser = sub.add_parser(
            "array",
            help="List job arrays, show one, cancel it or retry its members.",
            description="Job arrays are made by 'create --array N' or 'bulk create --array'. "
            "Their members are jobs: 'list --array ID' lists them.",
        )
        actions = array_parser.add_subparsers(dest="array_action", required=True, metavar="ACTION")
        listing = actions.add_parser("list", help="List job arrays, newest first.")
        self._list_options(listing, "arrays")
        described = {
            "show": "An array's members counted by status, and whether all have ended.",
            "cancel": "Cancel every member that has not ended (running ones: their workers "
            "stop them).",
            "retry": "Queue again the members that failed, timed out or were cancelled.",
        }
        self._add_actions_on_one(actions, described, "array_id", "ARRAY_ID")
        actions.choices["retry"].add_argument(
            "--failed-only",
            action="store_true",
            help="Only the members that failed or timed out, not the cancelled ones.",
        )
        return list(actions.choices.values())

    @staticmethod
    def _add_job_options(parser):
        """What a job is (image, argv, host, environment, limits, confinement): the options
        of ``create`` and ``schedule add``."""
        parser.add_argument("--image", required=True, help="Image to run, e.g. alpine:3.20.")
        parser.add_argument(
            "--host", help="Executor host name (default: chosen by routing among active hosts)."
        )
        parser.add_argument(
            "--executor-type",
            help="Routing: only hosts of this executor type (docker, mock, ...).",
        )
        parser.add_argument(
            "--label",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="Routing: only hosts with this label (repeatable).",
        )
        parser.add_argument("--name", help="A name for people.")
        parser.add_argument(
            "--env",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="An environment variable, on top of the template's (repeatable). Values of "
            "names matching SECRET_ENV_PATTERNS are stored encrypted and shown masked.",
        )
        parser.add_argument(
            "--secret",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="A variable whose value is secret whatever its name: stored encrypted, "
            "shown masked (repeatable). Beware: command lines can be seen by other users "
            "of this machine.",
        )
        parser.add_argument("--env-template", metavar="NAME", help="Environment template name.")
        parser.add_argument("--memory", type=int, metavar="MB", help="Memory limit in MB.")
        parser.add_argument("--cpus", type=float, metavar="N", help="CPU limit in cores.")
        parser.add_argument(
            "--gpus", type=int, metavar="N", help="GPUs the job needs (at most MAX_GPUS)."
        )
        parser.add_argument("--timeout", type=int, metavar="S", help="Timeout in seconds.")
        parser.add_argument("--priority", type=int, metavar="P", help="Higher runs first.")
        parser.add_argument("--max-attempts", type=int, metavar="N", help="Tries before giving up.")
        parser.add_argument(
            "--webhook-url", metavar="URL", help="POSTed to, signed, when the job ends."
        )
        confinement = parser.add_argument_group(
            "confinement", "Beyond the safe defaults; each must be allowed by the container policy."
        )
        confinement.add_argument("--run-as", metavar="USER[:GROUP]", help="User to run as.")
        confinement.add_argument(
            "--read-only-root", action="store_true", help="Mount the root filesystem read-only."
        )
        confinement.add_argument(
            "--cap-add", action="append", default=[], metavar="CAP", help="Add a capability."
        )
        confinement.add_argument(
            "--mount",
            action="append",
            default=[],
            metavar="SRC:DST[:ro|rw]",
            help="Bind-mount a host path (read-only unless :rw).",
        )
        confinement.add_argument("--privileged", action="store_true")
        confinement.add_argument("--host-network", action="store_true")
        confinement.add_argument("--host-pid", action="store_true")
        parser.add_argument(
            "argv", nargs="*", metavar="-- ARGV", help="The command (default: the image's)."
        )

    def _add_schedule_arguments(self, sub) -> list:
        """The ``schedule`` subcommand; returns its actions' parsers."""
        schedule_parser = sub.add_parser(
            "schedule",
            help="Add, list, show, pause, resume or remove schedules.",
            description="A schedule makes a job at each due time of a cron expression (read in "
            "its time zone) or interval, exactly once however many workers run. Workers fire "
            "them; see the README, Schedules.",
        )
        actions = schedule_parser.add_subparsers(
            dest="schedule_action", required=True, metavar="ACTION"
        )
        add = actions.add_parser(
            "add",
            help="Add a schedule: when, what to do about missed and overlapping runs, and the "
            "job (create's options).",
            description="Add a schedule. Its job is given as to 'create': --image, options, "
            "and the argv after '--'.",
        )
        add.add_argument("schedule_name", metavar="NAME")
        when = add.add_mutually_exclusive_group(required=True)
        when.add_argument("--cron", metavar="EXPR", help='Five fields, e.g. "0 3 * * *".')
        when.add_argument("--every", type=positive_int, metavar="SECONDS", help="An interval.")
        add.add_argument(
            "--time-zone", default="UTC", metavar="ZONE", help="For --cron (default UTC)."
        )
        add.add_argument(
            "--missed-runs",
            choices=Schedule.MissedRuns.values,
            default=Schedule.MissedRuns.RUN_ONCE,
            help="After due times went by with no worker running: one run for the latest "
            "(run_once, the default) or none (skip).",
        )
        add.add_argument(
            "--starting-deadline",
            type=positive_int,
            metavar="S",
            help="A due time more than S seconds past is not run (default: never too late).",
        )
        add.add_argument(
            "--concurrency",
            choices=Schedule.Concurrency.values,
            default=Schedule.Concurrency.ALLOW,
            help="While the previous run is unfinished: allow another (default), forbid it "
            "(skip the due time) or replace (cancel the previous one).",
        )
        add.add_argument("--keep-successful", type=int, metavar="N", help="Completed runs kept.")
        add.add_argument("--keep-failed", type=int, metavar="N", help="Unsuccessful runs kept.")
        add.add_argument("--paused", action="store_true", help="Add it paused.")
        self._add_job_options(add)
        self._json_flag(add)
        listing = actions.add_parser("list", help="Every schedule: when, next and last run.")
        self._json_flag(listing)
        described = {
            "show": "A schedule, its next due times and its latest runs.",
            "pause": "Make no more jobs until resumed.",
            "resume": "Make jobs again from the next due time (what fell due while paused is "
            "not caught up).",
            "remove": "Delete a schedule; the jobs it made stay.",
        }
        self._add_actions_on_one(actions, described, "schedule_name", "NAME")
        return list(actions.choices.values())

    def _add_actions_on_one(self, actions, described: dict[str, str], dest: str, metavar: str):
        """An action per ``described`` name (its help), each on one thing named by ``dest``."""
        for name, text in described.items():
            one = actions.add_parser(name, help=text, description=text)
            one.add_argument(dest, metavar=metavar)
            self._json_flag(one)

    def _list_options(self, parser, what: str):
        parser.add_argument(
            "--limit",
            type=positive_int,
            default=DEFAULT_LIST_LIMIT,
            metavar="N",
            help=f"At most N {what} (default {DEFAULT_LIST_LIMIT}).",
        )
        self._json_flag(parser)

    @staticmethod
    def _parallelism_option(parser):
        parser.add_argument(
            "--parallelism",
            type=positive_int,
            metavar="K",
            help="With --array: at most K members launch or run at once (default: no limit).",
        )

    @staticmethod
    def _json_flag(parser):
        parser.add_argument("--json", dest="as_json", action="store_true", help="Output JSON.")

    def handle(self, *args, **options):
        options["acting_user"] = user = self.acting_user(options.get("user"))
        for permission, doing in self.permissions_needed(options):
            if permission == REVEAL[0] and user is None:
                raise CommandError(
                    "--reveal-secrets needs --user USERNAME, a user with "
                    f"{permission}; the operator's rights do not include it"
                )
            if user is not None and (refused := refusal(user, Needed(permission, doing))):
                raise CommandError(refused)
        handler = getattr(self, f"handle_{options['subcommand']}")
        try:
            handler(options)
        except ValidationError as error:
            raise invalid(error) from error
        except (InvalidTransition, SecretError) as error:
            raise CommandError(str(error)) from error

    # -- who may do what -----------------------------------------------------------------

    @staticmethod
    def acting_user(username):
        """The user named by --user, or None: the operator of the server, with full rights."""
        if username is None:
            return None
        User = get_user_model()
        try:
            user = User._default_manager.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"no user named {username!r} (given with --user)") from None
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        return user

    @staticmethod
    def permissions_needed(options) -> list[tuple[str, str]]:
        subcommand = options["subcommand"]
        by_subcommand = {"create": ADD, "release": RELEASE, "cancel": CANCEL, "retry": RETRY}
        needed = [by_subcommand[subcommand]] if subcommand in by_subcommand else []
        if subcommand == "bulk":
            action = options["bulk_action"]
            needed.append(ADD if action == "create" else BULK_ACTIONS[action].permission)
        if subcommand == "array" and options["array_action"] in ("cancel", "retry"):
            needed.append(by_subcommand[options["array_action"]])
        if subcommand == "schedule" and options["schedule_action"] in SCHEDULE_PERMISSIONS:
            needed.append(SCHEDULE_PERMISSIONS[options["schedule_action"]])
        if subcommand == "hosts" and options.get("check"):
            needed.append(CHECK_HOSTS)
        if subcommand == "show" and options.get("reveal_secrets"):
            needed.append(REVEAL)
        reading_arrays = subcommand == "array" and options["array_action"] in ("list", "show")
        if subcommand in ("list", "show", "logs") or reading_arrays:
            needed.append(VIEW)  # as in the admin and the HTTP API
        return needed

    # -- helpers -----------------------------------------------------------------------

    def write_json(self, data):
        self.stdout.write(json.dumps(data, indent=2))

    def write_listing(self, options, items: list, to_dict, nothing: str, headers, row) -> None:
        """``items`` as JSON (``to_dict`` each), ``nothing`` when there are none, or a table
        of ``headers`` and a ``row`` each."""
        if options["as_json"]:
            self.write_json([to_dict(item) for item in items])
        elif not items:
            self.stdout.write(nothing)
        else:
            for line in table(headers, [row(item) for item in items]):
                self.stdout.write(line)

    def get_job(self, job_id: str) -> ContainerJob:
        """The job a job id, or an execution id of one of its attempts, names."""
        found = list(
            ContainerJob.objects.identified_by(job_id).select_related(
                "host", "environment_template", "created_by"
            )[:2]
        )
        if not found:
            raise CommandError(f"no job with id or execution id {job_id!r}")
        if len(found) > 1:
            ids = ", ".join(str(job.pk) for job in found)
            raise CommandError(f"{job_id!r} names more than one job ({ids}): give a job id")
        return found[0]

    def get_array(self, array_id: str) -> JobArray:
        # Job and array ids are both uuids; one parser says what is not one.
        pk = as_job_id(array_id)
        array = JobArray.objects.select_related("created_by").filter(pk=pk).first() if pk else None
        if array is None:
            raise CommandError(f"no job array with id {array_id!r}")
        return array

    def get_host(self, name: str) -> ExecutorHost:
        try:
            return ExecutorHost.objects.get(name=name)
        except ExecutorHost.DoesNotExist:
            raise ValidationError({"host": f"no executor host named {name!r}"}) from None

    # -- subcommands ---------------------------------------------------------------------

    @staticmethod
    def job_arguments(options) -> dict:
        """``create_job``'s keyword arguments from the job options (``_add_job_options``);
        only those given, so the settings' defaults apply to the rest."""
        fields = {
            field: options[option]
            for option, field in CREATE_FIELDS.items()
            if options[option] is not None
        }
        fields.update({switch: True for switch in CONFINEMENT_SWITCHES if options[switch]})
        if options["cap_add"]:
            fields["capabilities"] = options["cap_add"]
        if options["mount"]:
            fields["mounts"] = [parse_mount(text) for text in options["mount"]]
        if options["label"]:
            fields["host_labels"] = parse_env(options["label"], "host_labels")
        given = {
            "host": options["host"],
            "env": parse_env(options["env"]),
            "secrets": parse_env(options["secret"], "secrets"),
            "env_template": options["env_template"],
        }
        return {**{key: value for key, value in given.items() if value}, **fields}

    def handle_create(self, options):
        arguments = {**self.job_arguments(options), "hold": options["hold"]}
        if options["acting_user"] is not None:
            arguments["created_by"] = options["acting_user"]
        if options["array"] is not None:
            self.create_array(options, arguments)
            return
        if options["parallelism"] is not None:
            raise CommandError("--parallelism limits an array's members: give --array N too")
        job = api.create_job(
            options["image"],
            options["argv"],
            depends_on=options["depends_on"] or None,
            **arguments,
        )
        if options["as_json"]:
            self.write_json(job_to_dict(job))
        else:
            where = job.host.name if job.host else "chosen by routing at launch"
            self.stdout.write(f"Created job {job.pk} (status: {job.status}, host: {where})")

    def create_array(self, options, arguments: dict) -> None:
        if options["depends_on"]:
            raise CommandError("--depends-on is for one job; an array's members cannot wait")
        created_by = arguments.pop("created_by", None)
        spec = {"image": options["image"], "command": options["argv"], **arguments}
        result = bulk.create_array(
            spec,
            size=options["array"],
            parallelism=options["parallelism"],
            created_by=created_by,
        )
        self.report_created(result, options)

    def report_created(self, result: bulk.BulkResult, options) -> None:
        """What bulk creation (of jobs or an array) did: JSON, or a line; every refusal."""
        if options["as_json"]:
            self.write_json(result.to_dict())
        if not result:
            problems = [f"{failure.item}: {failure.reason}" for failure in result.failed]
            raise CommandError("\n".join(["nothing was created:", *problems]))
        if options["as_json"]:
            return
        status = result.succeeded[0].status
        array = getattr(result, "array", None)
        if array is None:
            self.stdout.write(f"Created {len(result.succeeded)} jobs ({status}).")
            return
        limit = f"at most {array.parallelism} at once" if array.parallelism else "no limit"
        self.stdout.write(f"Created job array {array.pk} of {array.size} jobs ({status}, {limit}).")

    def handle_list(self, options):
        jobs = ContainerJob.objects.select_related("host")
        if options["status"]:
            jobs = jobs.filter(status=options["status"])
        if options["host"]:
            jobs = jobs.filter(host=self.get_host(options["host"]))
        if options["array"]:
            jobs = jobs.filter(array=self.get_array(options["array"])).order_by("array_index")
        if options["as_json"]:
            jobs = jobs.select_related("environment_template", "created_by").prefetch_related(
                "attempt_set__host", "depends_on", "webhook_deliveries"
            )
            self.write_json([job_to_dict(job) for job in jobs[: options["limit"]]])
            return
        rows = [
            [
                str(job.pk),
                clip(job.name, 30) or "-",
                job.status,
                job.host.name if job.host else "-",
                clip(job.image, 40),
                when(job.created_at),
            ]
            for job in jobs[: options["limit"]]
        ]
        if not rows:
            self.stdout.write("No jobs.")
            return
        for line in table(["ID", "NAME", "STATUS", "HOST", "IMAGE", "CREATED"], rows):
            self.stdout.write(line)

    def handle_show(self, options):
        job = self.get_job(options["job_id"])
        reveal = options["reveal_secrets"]
        if options["as_json"]:
            self.write_json(job_to_dict(job, reveal_secrets=reveal))
            return
        for label, value in self.describe(job, reveal_secrets=reveal):
            lines = str(value).splitlines() or [""]
            self.stdout.write(f"{label}: {lines[0]}")
            for line in lines[1:]:
                self.stdout.write(f"    {line}")
        attempts = list(job.attempt_set.select_related("host"))
        self.stdout.write("Attempt history:" + ("" if attempts else " none"))
        rows = [
            [
                f"#{attempt.number}",
                attempt.status,
                " → ".join([*(t["host"] for t in attempt.tries), attempt.host.name])
                if attempt.host
                else "-",
                attempt.known_execution_id or "-",
                "-" if attempt.exit_code is None else str(attempt.exit_code),
                when(attempt.started_at),
                clip(attempt.error, 80) or "-",
            ]
            for attempt in attempts
        ]
        if rows:
            headers = ["#", "STATUS", "HOST", "EXECUTION ID", "EXIT", "STARTED", "ERROR"]
            for line in table(headers, rows):
                self.stdout.write(f"  {line}")
        self.show_deliveries(job)

    def show_deliveries(self, job):
        """The job's webhook deliveries, if it has a webhook or had one."""
        deliveries = list(job.webhook_deliveries.all())
        if not deliveries and not job.webhook_target:
            return
        self.stdout.write("Webhook deliveries:" + ("" if deliveries else " none yet"))
        rows = [
            [
                str(delivery.pk),
                delivery.job_status,
                delivery.status,
                str(delivery.attempts),
                when(delivery.delivered_at),
                clip(delivery.last_answer, 60) or "-",
                clip(delivery.url, 60),
            ]
            for delivery in deliveries
        ]
        if rows:
            headers = ["ID", "ENDING", "STATUS", "TRIES", "DELIVERED", "LAST ANSWER", "URL"]
            for line in table(headers, rows):
                self.stdout.write(f"  {line}")

    def describe(self, job, reveal_secrets=False) -> list[tuple[str, object]]:
        status = job.status
        if job.cancel_requested_at and not job.is_terminal:
            status += f" (cancel requested at {when(job.cancel_requested_at)})"
        env = []
        if job.environment_template:
            env.append(f"template {job.environment_template.name}")
        if job.environment_overrides:
            env.append("variables " + ", ".join(sorted(job.environment_overrides)))
        # One more line per variable, KEY=value, secret values masked unless revealed.
        variables = job.get_environment_display(reveal=reveal_secrets)
        env_text = "\n".join(
            ["; ".join(env) or "-", *(f"{k}={v}" for k, v in sorted(variables.items()))]
        )
        limits = [f"timeout {job.timeout_seconds} s"]
        if job.memory_limit is not None:
            limits.append(f"memory {job.memory_limit} MB")
        if job.cpu_limit is not None:
            limits.append(f"cpus {job.cpu_limit:g}")
        if job.duration is not None:
            duration = human_duration(job.duration)
        elif job.started_at and not job.is_terminal:
            duration = human_duration(timezone.now() - job.started_at)
            duration += " so far"
        else:
            duration = "-"
        lines = [
            ("ID", job.pk),
            ("Name", job.name or "-"),
            ("Status", status),
            ("Requested", describe_request(job)),
            ("Host", job.host.name if job.host else "-"),
            ("Execution ID", job.get_execution_identifier() or "-"),
            ("Image", job.image),
            ("Command", job.command_line() or "(the image's default)"),
            ("Working dir", job.working_dir or "(the image's default)"),
            ("Environment", env_text),
            ("Limits", ", ".join(limits)),
            ("Priority", job.priority),
            *self.array_line(job),
            ("Exit code", "-" if job.exit_code is None else job.exit_code),
            ("Attempts", f"{job.attempts} of {job.max_attempts}"),
            ("Retry on", ", ".join(job.retry_on or []) or "-"),
            ("Last error", job.last_error or "-"),
            ("Created", when(job.created_at)),
        ]
        if job.created_by:
            lines.append(("Created by", job.created_by.get_username()))
        if job.scheduled_for:
            lines.append(("Scheduled for", when(job.scheduled_for)))
        lines += [
            ("Queued", when(job.queued_at)),
            ("Started", when(job.started_at)),
            ("Finished", when(job.finished_at)),
            ("Duration", duration),
        ]
        if job.peak_memory_bytes is not None:
            lines.append(("Peak memory", human_bytes(job.peak_memory_bytes)))
        if job.cpu_seconds is not None:
            lines.append(("CPU time", f"{job.cpu_seconds:.2f} s"))
        return lines

    @staticmethod
    def array_line(job) -> list[tuple[str, object]]:
        if job.array_id is None:
            return []
        return [("Array", f"{job.array_id} (index {job.array_index})")]

    def handle_logs(self, options):
        job = self.get_job(options["job_id"])
        if options["follow"] and (options["only_stdout"] or options["only_stderr"]):
            raise CommandError(
                "--follow streams stdout and stderr together; leave out --stdout/--stderr"
            )
        if options["only_stdout"]:
            streams = ["stdout"]
        elif options["only_stderr"]:
            streams = ["stderr"]
        else:
            streams = ["stdout", "stderr"]
        if options["follow"]:
            try:
                self.follow(job)
            except KeyboardInterrupt:
                raise SystemExit(130) from None
        else:
            self.write_stored(job, streams)

    def write_stored(self, job, streams=("stdout", "stderr")):
        for text in api.stored_output(job, streams):
            self.stdout.write(text, ending="")

    def follow(self, job):
        """Stream a running job's output until it ends; wait for one not running yet."""
        try:
            for text in api.follow_output(job, say=self.stderr.write):
                self.stdout.write(text, ending="")
                self.stdout.flush()
        except ExecutorError as error:
            raise CommandError(f"streaming the logs of job {job.pk} failed: {error}") from error

    def handle_release(self, options):
        # Every id is looked up first: a mistyped one releases nothing.
        jobs: dict[uuid.UUID, ContainerJob] = {}
        for job_id in options["job_ids"]:
            job = self.get_job(job_id)
            jobs.setdefault(job.pk, job)  # the same job given twice is released once
        released, refused = [], []
        for job in jobs.values():
            try:
                job = api.release_job(job)
            except ValidationError as error:
                refused.append(f"job {job.pk}: {'; '.join(validation_error_lines(error))}")
                continue
            except InvalidTransition as error:
                refused.append(f"job {job.pk}: {error}")
                continue
            released.append(job)
            if not options["as_json"]:  # as it happens: the output says what was done
                later = job.scheduled_for > timezone.now()
                at = f", scheduled for {when(job.scheduled_for)}" if later else ""
                self.stdout.write(f"Released job {job.pk} (status: {job.status}{at}).")
        if options["as_json"]:
            self.write_json([job_to_dict(job) for job in released])
        if refused:
            if len(jobs) > 1:
                refused.insert(0, f"{len(refused)} of {len(jobs)} jobs not released:")
            raise CommandError("\n".join(refused))

    def handle_cancel(self, options):
        job = api.cancel_job(self.get_job(options["job_id"]))
        if options["as_json"]:
            self.write_json(job_to_dict(job))
        elif job.status == JobStatus.CANCELLED:
            self.stdout.write(f"Cancelled job {job.pk}.")
        else:
            self.stdout.write(
                f"Cancel requested for job {job.pk} (it is {job.status}); "
                "the worker running it stops it."
            )

    def handle_retry(self, options):
        job = api.retry_job(self.get_job(options["job_id"]))
        if options["as_json"]:
            self.write_json(job_to_dict(job))
        else:
            self.stdout.write(
                f"Queued job {job.pk} again (attempts so far: {job.attempts}, "
                f"max attempts now: {job.max_attempts})."
            )

    # -- bulk ----------------------------------------------------------------------------

    def handle_bulk(self, options):
        if options["bulk_action"] == "create":
            self.bulk_create(options)
        else:
            self.bulk_act(options)

    def bulk_create(self, options):
        spec = self.read_input(options["spec"], bulk.read_spec)
        if options["hold"]:
            spec["hold"] = True
        params = options["params"]
        format = options["format"] or bulk.guess_format(params)
        rows = self.read_input(params, lambda text: bulk.read_params(text, format))
        progress = None if options["as_json"] else self.progress_printer()
        created_by = options["acting_user"]
        if options["array"]:
            result: bulk.BulkResult = bulk.create_array(
                spec,
                rows=rows,
                parallelism=options["parallelism"],
                created_by=created_by,
                progress=progress,
            )
        elif options["parallelism"] is not None:
            raise CommandError("--parallelism limits an array's members: give --array too")
        else:
            result = bulk.create_jobs(spec, rows, created_by=created_by, progress=progress)
        self.report_created(result, options)

    def read_input(self, path: str, parse):
        """``parse`` of the text of ``path`` ('-': standard input); a CommandError naming the
        file and listing each problem if it cannot be read or parsed."""
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as file:
                    text = file.read()
        except OSError as error:
            raise CommandError(f"cannot read {path}: {error.strerror or error}") from None
        except UnicodeDecodeError as error:
            raise CommandError(f"{path} is not UTF-8 text: {error}") from None
        try:
            return parse(text)
        except ValidationError as error:
            problems = validation_error_lines(error)
            raise CommandError("\n".join([f"{path}: nothing was created:", *problems])) from None

    def progress_printer(self):
        """``progress(done, total)`` for bulk creation: a bar redrawn in place on a terminal,
        else a line per batch (for logs)."""
        if not self.stdout.isatty():
            return lambda done, total: self.stdout.write(f"created {done} of {total} jobs")

        def draw(done: int, total: int) -> None:
            filled = PROGRESS_BAR_WIDTH * done // max(total, 1)
            bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
            self.stdout.write(f"\r[{bar}] {done}/{total} jobs", ending="")
            if done >= total:
                self.stdout.write("")  # the summary goes on a line of its own
            self.stdout.flush()

        return draw

    def bulk_act(self, options):
        action = options["bulk_action"]
        _, run, done = BULK_ACTIONS[action]
        arguments = {}
        if action == "reroute":
            arguments["host"] = options["host"]
        if action == "duplicate":
            arguments["created_by"] = options["acting_user"]
        result = run(self.job_ids(options), **arguments)
        summary = f"{done} {len(result.succeeded)} of {result.total} jobs"
        if action == "reroute":
            summary += f" to {options['host']}"
        self.report_done(result, summary, options, cancelling=action == "cancel")

    def report_done(
        self, result: bulk.BulkResult, summary: str, options, cancelling: bool = False
    ) -> None:
        """What an action on many jobs did: JSON or ``summary``; fails naming each refusal."""
        if cancelling and result.still_running:
            summary += f" ({result.still_running} running: their workers stop them)"
        if options["as_json"]:
            self.write_json(result.to_dict())
        if not result:
            refusals = [f"job {failure.item}: {failure.reason}" for failure in result.failed]
            raise CommandError("\n".join([f"{summary}; {len(refusals)} refused:", *refusals]))
        if not options["as_json"]:
            self.stdout.write(summary + ".")

    # -- arrays --------------------------------------------------------------------------

    def handle_schedule(self, options):
        action = options["schedule_action"]
        if action == "add":
            self.schedule_add(options)
            return
        if action == "list":
            self.schedule_list(options)
            return
        schedule = self.get_schedule(options["schedule_name"])
        if action == "pause":
            scheduling.pause(schedule)
        elif action == "resume":
            scheduling.resume(schedule)
        elif action == "remove":
            schedule.delete()
            if options["as_json"]:
                self.write_json({"removed": options["schedule_name"]})
            else:
                self.stdout.write(f"Removed schedule {options['schedule_name']!r}.")
            return
        self.schedule_show(schedule, options)

    def get_schedule(self, name: str) -> Schedule:
        try:
            return Schedule.objects.get(name=name)
        except Schedule.DoesNotExist:
            raise CommandError(f"no schedule named {name!r}") from None

    def schedule_add(self, options):
        spec = {
            "image": options["image"],
            "command": options["argv"],
            **self.job_arguments(options),
        }
        limits = {
            "successful_runs_to_keep": options["keep_successful"],
            "failed_runs_to_keep": options["keep_failed"],
        }
        schedule = scheduling.save_schedule(
            Schedule(
                name=options["schedule_name"],
                cron=options["cron"] or "",
                interval_seconds=options["every"],
                time_zone=options["time_zone"],
                missed_runs=options["missed_runs"],
                starting_deadline_seconds=options["starting_deadline"],
                concurrency=options["concurrency"],
                paused=options["paused"],
                created_by=options["acting_user"],
                job_spec=spec,
                **{field: value for field, value in limits.items() if value is not None},
            )
        )
        self.schedule_show(schedule, options)

    def schedule_list(self, options):
        def row(schedule):
            last = schedule.last_run()
            return [
                clip(schedule.name, 30),
                clip(schedule.every, 40),
                "paused" if schedule.paused else when(schedule.next_run_at),
                when(schedule.last_run_at) if schedule.last_run_at else "-",
                last.status if last else "-",
            ]

        headers = ["NAME", "WHEN", "NEXT RUN", "LAST RUN", "LAST OUTCOME"]
        schedules = list(Schedule.objects.all())
        self.write_listing(options, schedules, schedule_to_dict, "No schedules.", headers, row)

    def schedule_show(self, schedule: Schedule, options):
        data = schedule_to_dict(schedule, upcoming=3)
        if options["as_json"]:
            self.write_json(data)
            return
        last = data["last_run"]
        lines = [
            ("Schedule", schedule.name),
            ("When", schedule.every),
            (
                "Next runs",
                "paused"
                if schedule.paused
                else ", ".join(when(moment) for moment in schedule.upcoming(3)),
            ),
            ("Missed runs", schedule.missed_runs),
            ("Concurrency", schedule.concurrency),
            (
                "Last run",
                f"{when(schedule.last_run_at)}: job {last['job_id']} ({last['status']})"
                if last and schedule.last_run_at
                else "-",
            ),
        ]
        if schedule.starting_deadline_seconds is not None:
            lines.append(("Starting deadline", f"{schedule.starting_deadline_seconds} s"))
        if schedule.last_skip_reason:
            lines.append(("Last skipped", schedule.last_skip_reason))
        for label, value in lines:
            self.stdout.write(f"{label}: {value}")

    def handle_array(self, options):
        getattr(self, f"array_{options['array_action']}")(options)

    def array_list(self, options):
        def row(array):
            summary = array.summary()
            ended = sum(summary["counts"][status] for status in TERMINAL)
            return [
                str(array.pk),
                clip(array.name, 30) or "-",
                f"{ended}/{array.size}",
                str(array.parallelism or "-"),
                summary["outcome"],
                when(array.created_at),
            ]

        headers = ["ID", "NAME", "ENDED", "PARALLELISM", "OUTCOME", "CREATED"]
        newest = JobArray.objects.with_counts().select_related("created_by")
        arrays = list(newest[: options["limit"]])
        self.write_listing(options, arrays, array_to_dict, "No job arrays.", headers, row)

    def array_show(self, options):
        array = self.get_array(options["array_id"])
        data = array_to_dict(array)
        if options["as_json"]:
            self.write_json(data)
            return
        counts = ", ".join(f"{status} {n}" for status, n in data["counts"].items() if n)
        lines = [
            ("ID", array.pk),
            ("Name", array.name or "-"),
            ("Size", array.size),
            ("Parallelism", array.parallelism or "no limit"),
            ("Members", counts or "none"),
            ("Done", "yes" if data["done"] else "no"),
            ("Outcome", data["outcome"]),
            ("Created", when(array.created_at)),
        ]
        if array.created_by:
            lines.append(("Created by", array.created_by.get_username()))
        for label, value in lines:
            self.stdout.write(f"{label}: {value}")

    def array_cancel(self, options):
        array = self.get_array(options["array_id"])
        result = bulk.cancel_array(array)
        summary = f"Cancelled {len(result.succeeded)} members of {array}"
        self.report_done(result, summary, options, cancelling=True)

    def array_retry(self, options):
        array = self.get_array(options["array_id"])
        result = bulk.retry_array(array, failed_only=options["failed_only"])
        self.report_done(
            result, f"Queued again {len(result.succeeded)} members of {array}", options
        )

    def job_ids(self, options) -> list[str]:
        ids = list(options["job_ids"])
        if options["ids_from"]:
            ids += self.read_input(options["ids_from"], lambda text: text.split())
        if not ids:
            raise CommandError("no job ids: give them as arguments, or with --ids-from FILE")
        return ids

    def handle_hosts(self, options):
        hosts: list[HostWithLoad] = list(ExecutorHost.objects.with_load())
        unhealthy = []
        if options["check"]:
            for host in hosts:
                try:
                    healthy = host.check_health().healthy
                except Exception as error:  # noqa: BLE001 - report it with the others
                    host.health_status = ExecutorHost.Health.UNHEALTHY
                    host.health_message = f"health check failed: {error!r}"
                    healthy = False
                if not healthy:
                    unhealthy.append(host.name)
        if options["as_json"]:
            self.write_json([host_to_dict(host) for host in hosts])
        elif not hosts:
            self.stdout.write("No executor hosts.")
        else:
            rows = [
                [
                    host.name,
                    host.executor_type,
                    # A chain runs nothing itself: where it routes to, instead of a load.
                    " → ".join(host.member_names) or host.connection_string or "(default)",
                    "yes" if host.is_active else "no",
                    host.health_status,
                    "-" if host.member_names else f"{host.load}/{host.max_concurrent_jobs}",
                    str(host.weight),
                    when(host.last_health_check),
                ]
                for host in hosts
            ]
            headers = [
                "NAME",
                "TYPE",
                "CONNECTION",
                "ACTIVE",
                "HEALTH",
                "RUNNING",
                "WEIGHT",
                "CHECKED",
            ]
            for line in table(headers, rows):
                self.stdout.write(line)
            for host in hosts:
                if options["check"] or host.health_status == ExecutorHost.Health.UNHEALTHY:
                    self.stdout.write(f"{host.name}: {host.health_status}: {host.health_message}")
        if unhealthy:
            raise CommandError(f"unhealthy host(s): {', '.join(unhealthy)}")
