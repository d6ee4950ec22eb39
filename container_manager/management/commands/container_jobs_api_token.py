"""Issue, list and revoke the HTTP API's bearer tokens (``container_manager.http_api``).

A token acts as its user, with that user's permissions; it is printed once, at ``create``,
and only its hash is stored.
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from container_manager.models import ApiToken


class Command(BaseCommand):
    help = "Create (print once), list or revoke the HTTP API's bearer tokens."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = sub.add_parser("create", help="A new token for a user, printed once.")
        create.add_argument("username", metavar="USERNAME")
        create.add_argument("--name", default="", help="What the token is for.")
        sub.add_parser("list", help="Every token: its id, start, user, name and last use.")
        revoke = sub.add_parser("revoke", help="Delete a token: it stops working at once.")
        revoke.add_argument("token_id", type=int, metavar="ID")

    def handle(self, *args, action, **options):
        getattr(self, f"handle_{action}")(**options)

    def handle_create(self, username, name, **options):
        User = get_user_model()
        try:
            user = User._default_manager.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        row, token = ApiToken.objects.issue(user, name)
        self.stderr.write(f"Token {row.pk} for {username} (shown once; keep it secret):")
        self.stdout.write(token)

    def handle_list(self, **options):
        for row in ApiToken.objects.select_related("user"):
            used = row.last_used_at.isoformat() if row.last_used_at else "never used"
            self.stdout.write(f"{row.pk}  {row.prefix}…  {row.user}  {row.name or '-'}  {used}")

    def handle_revoke(self, token_id, **options):
        if not ApiToken.objects.filter(pk=token_id).delete()[0]:
            raise CommandError(f"no API token with id {token_id}")
        self.stdout.write(f"Revoked API token {token_id}.")
