"""Carry django-container-manager 1.0.14's hosts, templates and jobs over to ours (a thin
layer over ``container_manager.legacy_import.import_legacy``).

Run after ``migrate``, which set that package's tables aside as ``container_manager_legacy_*``.
``--dry-run`` says what would be carried over and what not, and changes nothing.
"""

from django.core.management.base import BaseCommand, CommandError

from container_manager.legacy_import import import_legacy
from container_manager.legacy_schema import LEGACY_TABLES, LegacySchemaError


class Command(BaseCommand):
    help = (
        "Import django-container-manager 1.0.14's hosts, templates and jobs from the "
        "container_manager_legacy_* tables that migrate set aside; once."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Report what would be carried over, and what not; write nothing.",
        )

    def handle(self, *args, **options):
        try:
            report = import_legacy(dry_run=options["dry_run"])
        except LegacySchemaError as error:
            raise CommandError(str(error)) from error
        for line in report.notes:
            self.stdout.write(line)
        done = "Would import" if options["dry_run"] else "Imported"
        self.stdout.write(
            f"{done} {report.hosts} host(s), {report.templates} template(s), {report.jobs} "
            f"job(s); {len(report.notes)} note(s) above."
        )
        if not options["dry_run"]:
            tables = ", ".join(LEGACY_TABLES.values())
            self.stdout.write(f"The old rows stay in {tables}; drop them once checked.")
