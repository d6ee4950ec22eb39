"""What a user needs to do what to jobs: one table for the command line (``--user``), the
HTTP API and the README's. The admin checks the same permissions through its actions."""

from typing import NamedTuple


class Needed(NamedTuple):
    permission: str
    doing: str  # what it lets a user do, as in "may not cancel jobs"


VIEW = Needed("container_manager.view_containerjob", "view jobs")
ADD = Needed("container_manager.add_containerjob", "create jobs")
CANCEL = Needed("container_manager.cancel_containerjob", "cancel jobs")
RETRY = Needed("container_manager.retry_containerjob", "retry jobs")
REVEAL = Needed("container_manager.reveal_secrets", "reveal secrets")


def refusal(user, needed: Needed) -> str | None:
    """Why ``user`` may not do what ``needed`` allows, or None when they may."""
    if user.has_perm(needed.permission):
        return None
    return f"user {user.get_username()!r} may not {needed.doing} (needs {needed.permission})"
