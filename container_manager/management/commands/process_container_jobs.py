import argparse
import logging

from django.conf import settings
from django.core import checks
from django.core.management.base import BaseCommand, CommandError

from container_manager import checks as checks_of_this_app
from container_manager.models import ExecutorHost
from container_manager.worker import Worker


def positive(kind, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive {what}, got {text!r}")
        return value

    return parse


logger = logging.getLogger("container_manager.worker")

positive_float = positive(float, "number of seconds")
positive_int = positive(int, "whole number")


class Command(BaseCommand):
    help = "Run a worker: claim queued container jobs, run them, record their outcome."
    requires_system_checks = [checks.Tags.models, checks_of_this_app.TAG]

    def add_arguments(self, parser):
        parser.add_argument(
            "--until-idle",
            action="store_true",
            help="Exit once nothing is running here and no job is ready to run.",
        )
        parser.add_argument(
            "--poll-interval",
            type=positive_float,
            help="Seconds between looks for new jobs (fractions allowed).",
        )
        parser.add_argument(
            "--max-concurrent", type=positive_int, help="Jobs this worker runs at once."
        )
        parser.add_argument(
            "--metrics-port",
            type=positive_int,
            metavar="PORT",
            help="Serve the Prometheus metrics of the whole cluster on this port (needs the "
            "metrics extra); see the README, Operations.",
        )
        parser.add_argument(
            "--host",
            action="append",
            dest="hosts",
            metavar="NAME",
            help="Only run jobs of this host (repeatable).",
        )

    def handle(self, *args, **options):
        hosts = options["hosts"] or []
        known = set(ExecutorHost.objects.filter(name__in=hosts).values_list("name", flat=True))
        missing = [name for name in hosts if name not in known]
        if missing:
            raise CommandError(f"--host: no executor host named {', '.join(map(repr, missing))}")
        if settings.DEBUG:
            # With DEBUG, Django times every statement and keeps each connection's last
            # 9,000: a worker's memory and time per job would depend on a development switch.
            settings.DEBUG = False
            logger.info("DEBUG is on in the settings; this worker runs with it off")
        worker = Worker(
            max_concurrent=options["max_concurrent"],
            poll_interval=options["poll_interval"],
            host_names=hosts,
            until_idle=options["until_idle"],
        )
        server = self._serve_metrics(options["metrics_port"])
        worker.install_signal_handlers()
        try:
            worker.run()
        finally:
            if server is not None:
                server.shutdown()

    def _serve_metrics(self, port):
        if port is None:
            return None
        try:
            from container_manager import metrics

            return metrics.serve(port)
        except (ImportError, OSError) as error:
            raise CommandError(f"--metrics-port {port}: {error}") from error
