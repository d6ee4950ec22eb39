"""The ``fallback`` host type: an explicit, ordered chain of other hosts.

A job sent to a fallback host runs on the first of its members that is fit for it (active,
healthy, with a free slot, allowed by its policy); a launch that fails for a host-level reason
moves on to the next member within the same attempt. That is routing (``routing.py``), not a
second way of running jobs: the execution and its id are the member's, and nothing is ever
launched on the chain itself.

``executor_config``: ``{"members": ["host-a", "host-b", ...]}``, names of hosts that run jobs.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError

from ...exceptions import LaunchError
from ..base import BaseExecutor, Health


class FallbackChain(BaseExecutor):
    type_name = "fallback"

    @classmethod
    def member_names(cls, config):
        members = config.get("members") if isinstance(config, dict) else None
        return list(members) if isinstance(members, list) else []

    @classmethod
    def validate_config(cls, config):
        unknown = sorted(set(config) - {"members"})
        if unknown:
            raise ValidationError(
                f"unknown fallback option(s) {', '.join(map(repr, unknown))} (known: 'members')"
            )
        members = config.get("members")
        if not (
            isinstance(members, list)
            and members
            and all(isinstance(name, str) and name.strip() for name in members)
        ):
            raise ValidationError(
                "fallback option 'members' must be a non-empty list of host names, "
                'e.g. {"members": ["engine-a", "engine-b"]}'
            )
        if len(set(members)) != len(members):
            raise ValidationError("fallback option 'members' names a host twice")

    def launch(self, spec):
        raise LaunchError(
            f"fallback host '{self.host.name}' runs nothing itself: routing launches its jobs "
            "on its members"
        )

    def health_check(self):
        members = self.member_names(dict(self.host.config))
        return Health(True, f"routes to {' → '.join(members)}; each member is checked itself")
