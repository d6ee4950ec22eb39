"""Launch descriptions made by hand, for tests of executors that need no job in a database."""

from container_manager.conf import setting
from container_manager.spec import Confinement


def confinement(**changes) -> Confinement:
    """The confinement of a job that asks for nothing special, with ``changes``."""
    values = {
        "user": None,
        "read_only_root": False,
        "privileged": False,
        "host_network": False,
        "host_pid": False,
        "add_capabilities": tuple(setting("DEFAULT_CAPABILITIES")),
        "pids_limit": 64,
        "mounts": (),
    }
    values.update(changes)
    return Confinement(**values)
