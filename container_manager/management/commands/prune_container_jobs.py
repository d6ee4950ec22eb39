"""Delete finished jobs past an age, or empty their output (a thin layer over
``container_manager.retention``).

    ./manage.py prune_container_jobs --older-than 30d [--status failed ...] [--keep-failed]
        [--trim-output] [--dry-run] [--batch-size 1000] [--pause 0.1]
"""

import argparse

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from container_manager import retention

from .process_container_jobs import positive_int


def age(text):
    try:
        return retention.parse_age(text)
    except ValidationError as error:
        raise argparse.ArgumentTypeError(error.messages[0]) from None


def pause(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, not {text!r}")
    return value


class Command(BaseCommand):
    help = (
        "Delete finished jobs (and their attempts) older than an age, in short batches, and "
        "the records of workers gone as long that no job names any more; or, with "
        "--trim-output, empty the jobs' stored stdout and stderr and keep them."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=age,
            required=True,
            metavar="AGE",
            help="Jobs that finished longer ago than this: 30d, 12h or 90m.",
        )
        parser.add_argument(
            "--status",
            action="append",
            dest="statuses",
            metavar="STATUS",
            help="Only jobs that ended so (repeatable): completed, failed, timed_out, "
            "cancelled. Default: all four.",
        )
        parser.add_argument(
            "--keep-failed", action="store_true", help="Keep failed and timed-out jobs."
        )
        parser.add_argument(
            "--trim-output",
            action="store_true",
            help="Empty their stdout and stderr instead of deleting them.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count the jobs; change nothing."
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=retention.BATCH_SIZE,
            help="Jobs per transaction (default %(default)s).",
        )
        parser.add_argument(
            "--pause",
            type=pause,
            default=0.0,
            metavar="SECONDS",
            help="Sleep this long between batches, leaving the database to others.",
        )

    def handle(self, *args, **options):
        try:
            done = retention.prune_jobs(
                options["older_than"],
                statuses=options["statuses"],
                keep_failed=options["keep_failed"],
                trim_output=options["trim_output"],
                dry_run=options["dry_run"],
                batch_size=options["batch_size"],
                pause=options["pause"],
            )
        except ValidationError as error:
            raise CommandError(f"--status: {error.messages[0]}") from None
        verb = "empty the output of" if options["trim_output"] else "delete"
        if options["dry_run"]:
            said = f"Dry run: would {verb} {done.jobs} job(s)"
        else:
            past = "Emptied the output of" if options["trim_output"] else "Deleted"
            said = f"{past} {done.jobs} job(s) in {done.batches} batch(es)"
        if not options["trim_output"]:
            workers = retention.prune_workers(options["older_than"], dry_run=options["dry_run"])
            if workers:
                said += f", and the records of {workers} worker(s) gone as long"
        self.stdout.write(f"{said}.")
