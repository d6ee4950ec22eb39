"""Re-encrypt every stored secret with the first key of ENCRYPTION_KEYS (a thin layer over
``container_manager.rotation.reencrypt_all``).

Rotation: put a new key first in ENCRYPTION_KEYS (keep the old ones after it), run this, and
drop an old key once this reports no failures. Secrets still stored in clear (from before
they were sealed) are sealed on the way. Only variable names are ever printed.
"""

from cryptography.fernet import Fernet
from django.core.management.base import BaseCommand, CommandError

from container_manager.rotation import reencrypt_all


class Command(BaseCommand):
    help = (
        "Re-encrypt all secret environment values (job overrides and templates) with the "
        "first key of CONTAINER_MANAGER['ENCRYPTION_KEYS']."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--generate-key",
            action="store_true",
            help="Only print a new Fernet key (to put first in ENCRYPTION_KEYS); change nothing.",
        )

    def handle(self, *args, **options):
        if options["generate_key"]:
            self.stdout.write(Fernet.generate_key().decode("ascii"))
            return
        result = reencrypt_all()
        self.stdout.write(
            f"Re-encrypted {result.values} secret value(s): "
            f"{result.jobs} job(s), {result.templates} template(s)."
        )
        if result.failed:
            raise CommandError(
                f"{len(result.failed)} value(s) could not be decrypted with any configured key "
                f"and were left as they are: {', '.join(result.failed)}"
            )
