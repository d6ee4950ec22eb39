"""An image of this project for the Tasks backend's tests, made without a registry.

A user's image is built from their Dockerfile (``FROM python:3.12``, ``pip install``, the
project's code). No base image can be pulled here, so this one is imported from the files
the running interpreter is made of: its installation (the standard library, trimmed), the
packages the project imports, the project's code, and the shared libraries those need (found
with ``ldd``). Tagged by a hash of what went in, so it is built once per machine and change.
"""

import hashlib
import io
import os
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the project imports at startup (settings, the app, its executors' shared parts).
PACKAGES = [
    "django",
    "asgiref",
    "sqlparse",
    "cryptography",
    "cffi",
    "pycparser",
    "docker",
    "requests",
    "urllib3",
    "certifi",
    "charset_normalizer",
    "idna",
    "cronsim",
    # Django 5.2's Tasks framework, the backport, and what it imports.
    "django_tasks",
    "django_stubs_ext",
    "typing_extensions",
]
PROJECT = ["container_manager", "example_project", "manage.py"]
LEFT_OUT = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages"}


def _stdlib_files():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib.rglob("*"):
        parts = set(path.relative_to(stdlib).parts)
        if path.is_file() and not parts & LEFT_OUT and not path.name.startswith("config-"):
            yield path


def _package_files(site_packages: Path):
    for name in PACKAGES:
        found = [site_packages / name, site_packages / f"{name}.py"]
        # Their metadata too: some read their own version (importlib.metadata).
        found += [*site_packages.glob(f"{name}*.so"), *site_packages.glob(f"{name}-*.dist-info")]
        for path in found:
            if path.is_dir():
                yield from (p for p in path.rglob("*") if p.is_file())
            elif path.is_file():
                yield path
    yield from site_packages.glob("_cffi_backend*.so")


def _project_files():
    for name in PROJECT:
        path = ROOT / name
        if path.is_file():
            yield path, f"app/{name}"
        else:
            for file in path.rglob("*"):
                if file.is_file() and "__pycache__" not in file.parts:
                    yield file, f"app/{file.relative_to(ROOT)}"


def _shared_libraries(binaries) -> set[str]:
    """Every library ``binaries`` link to (ldd), the dynamic loader included."""
    needed = set()
    for binary in binaries:
        listed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        for line in listed.splitlines():
            words = line.split()
            if "=>" in words and len(words) > words.index("=>") + 1:
                target = words[words.index("=>") + 1]
                if target.startswith("/"):
                    needed.add(target)
            elif words and words[0].startswith("/"):
                needed.add(words[0])
    return needed


def build(client) -> str:
    """The image's tag, imported into ``client``'s engine unless it is there already."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    python = Path(os.path.realpath(sys.executable))
    prefix = Path(sys.base_prefix)
    files = [(path, str(path).lstrip("/")) for path in _stdlib_files()]
    files += [(path, f"app/site-packages/{path.relative_to(site_packages)}")
              for path in _package_files(site_packages)]  # fmt: skip
    files += list(_project_files())
    binaries = [python, *prefix.glob("lib/libpython*.so*")]
    binaries += [path for path, _ in files if path.suffix == ".so"]
    files += [(python, str(python).lstrip("/"))]
    files += [(Path(lib), lib.lstrip("/")) for lib in _shared_libraries(binaries)]
    files += [(lib, str(lib).lstrip("/")) for lib in prefix.glob("lib/libpython*.so*")]
    files = sorted(dict((name, path) for path, name in files).items())  # each name once
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(f"{name} {path.stat().st_size} {path.stat().st_mtime_ns}\n".encode())
    python_version = f"py{sys.version_info.major}{sys.version_info.minor}"
    tag = f"local/project-tasks-{python_version}:{digest.hexdigest()[:16]}"
    if client.images.list(name=tag):
        return tag
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, path in files:
            tar.add(os.path.realpath(path), arcname=name, recursive=False)
        link = tarfile.TarInfo("usr/local/bin/python")
        link.type, link.linkname = tarfile.SYMTYPE, str(python)
        tar.addfile(link)
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(tmp)
    repository, version = tag.split(":")
    for older in client.images.list(name=repository):  # each is a few hundred MB
        client.images.remove(older.id, force=True)
    client.api.import_image_from_data(
        archive.getvalue(),
        repository=repository,
        tag=version,
        changes=[
            "ENV PATH=/usr/local/bin:/usr/bin:/bin",
            "ENV PYTHONPATH=/app:/app/site-packages",
            "ENV DJANGO_SETTINGS_MODULE=example_project.settings",
            "WORKDIR /app",
        ],
    )
    return tag
