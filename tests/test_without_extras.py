"""The app without any cloud client installed: everything imports and runs, and a host of a
cloud type says which extra to install instead of failing obscurely."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter where the cloud clients cannot be imported, as on a machine that
# installed django-container-jobs without its extras.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, os, sys

    BLOCKED = ("google", "boto3", "botocore", "kubernetes", "moto", "ninja", "prometheus_client")

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    os.environ["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
    os.environ["DATABASE_URL"] = "sqlite:///" + sys.argv[1]
    import django
    django.setup()
    import pkgutil, container_manager
    def skip(name):  # the HTTP API's package, tried below; any other failure fails
        if name != "container_manager.http_api":
            raise
    for module in pkgutil.walk_packages(container_manager.__path__, "container_manager.", skip):
        if module.name.startswith("container_manager.http_api"):
            continue  # tried below
        if ".migrations." not in module.name:
            importlib.import_module(module.name)
    try:
        import container_manager.http_api
    except ImportError as error:
        print("HTTP", error)
    import example_project.urls  # the project's URLconf leaves the HTTP API out
    from django.core.management import call_command
    call_command("migrate", verbosity=0)
    from container_manager.executors import executor_types
    from container_manager.models import ExecutorHost
    for type_name in sorted(set(executor_types()) - {"docker", "mock", "fallback"}):
        host = ExecutorHost.objects.create(name=type_name, executor_type=type_name)
        health = host.check_health()
        print(type_name, health.healthy, health.message)
    from django.core import checks
    for message in checks.run_checks(databases=["default"]):
        print("CHECK", message.id, message.msg)
    from container_manager import metrics
    try:
        metrics.registry()
    except ImportError as error:
        print("metrics", False, error)
    """
)


def test_without_cloud_clients_the_app_imports_and_cloud_hosts_name_their_extra(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "db.sqlite3")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    # `manage.py check --database default` names each such host and its extra.
    # The HTTP API says which extra it needs.
    needs_ninja = (
        "HTTP container_manager.http_api needs django-ninja; install it with: "
        "pip install 'django-container-jobs[http]'"
    )
    assert needs_ninja in lines, lines
    lines = [line for line in lines if not line.startswith("HTTP ")]
    reported = [line for line in lines if line.startswith("CHECK ")]
    assert len(reported) == 3, reported
    for line in reported:
        assert line.startswith("CHECK container_manager.W003 executor host "), line
    for line in set(lines) - set(reported):
        type_name, healthy, message = line.split(" ", 2)
        assert healthy == "False", line
        assert f"django-container-jobs[{type_name}]" in message, line
