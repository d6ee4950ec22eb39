"""Recognising a database left by django-container-manager 1.0.14, and setting its tables aside.

That package has our app label, ``container_manager``, its own migration history, and tables
of our tables' names. Its ``0001_initial`` row in ``django_migrations`` makes Django take our
``0001_initial`` as applied, so our next migration would alter its tables. Our 0002 therefore
starts with ``set_aside_1x``: on such a database it copies the three old tables to
``container_manager_legacy_*``, drops the originals and creates ours, in that migration's
transaction; ``import_container_manager_1x`` then carries the rows over. The schema is
recognised precisely (tables, columns, the migration names) and anything else of that
package is refused, naming what differs, before a thing is changed.

This module imports no model: migrations run it against historical states.
"""

from django.db import connection as default_connection
from django.db.migrations.loader import MigrationLoader

from .exceptions import ContainerManagerError

APP = "container_manager"
# The migrations django-container-manager 1.0.14 records under our label.
MIGRATIONS_1X = frozenset(
    {"0001_initial", "0002_containerjob_last_error_containerjob_last_error_at_and_more"}
)
# Its tables, as its 1.0.14 migrations leave them, and where each is set aside.
TABLES_1X: dict[str, frozenset[str]] = {
    "container_manager_executorhost": frozenset(
        [
            "id",
            "name",
            "host_type",
            "connection_string",
            "tls_enabled",
            "tls_verify",
            "is_active",
            "auto_pull_images",
            "executor_type",
            "executor_config",
            "max_concurrent_jobs",
            "weight",
            "current_job_count",
            "created_at",
            "updated_at",
        ]
    ),
    "container_manager_environmentvariabletemplate": frozenset(
        [
            "id",
            "name",
            "description",
            "environment_variables_text",
            "created_at",
            "updated_at",
            "created_by_id",
        ]
    ),
    "container_manager_containerjob": frozenset(
        [
            "id",
            "name",
            "status",
            "description",
            "docker_image",
            "command",
            "working_directory",
            "memory_limit",
            "cpu_limit",
            "timeout_seconds",
            "network_configuration",
            "override_environment",
            "execution_id",
            "exit_code",
            "started_at",
            "completed_at",
            "executor_metadata",
            "max_memory_usage",
            "cpu_usage_percent",
            "stdout_log",
            "stderr_log",
            "docker_log",
            "clean_output",
            "created_at",
            "updated_at",
            "created_by_id",
            "environment_template_id",
            "docker_host_id",
            "last_error",
            "last_error_at",
            "launched_at",
            "max_retries",
            "priority",
            "queued_at",
            "retry_count",
            "retry_strategy",
            "scheduled_for",
        ]
    ),
}
# A column only that package's job table has: its presence says whose table this is.
MARKER_TABLE, MARKER_COLUMN = "container_manager_containerjob", "docker_image"
# Jobs first: they point at the other two.
SET_ASIDE_ORDER = [
    "container_manager_containerjob",
    "container_manager_environmentvariabletemplate",
    "container_manager_executorhost",
]


def legacy_table(table: str) -> str:
    """Where the old ``table`` is kept: ``container_manager_legacy_<model>``."""
    return table.replace(f"{APP}_", f"{APP}_legacy_", 1)


LEGACY_TABLES = {table: legacy_table(table) for table in TABLES_1X}


class LegacySchemaError(ContainerManagerError):
    """A database of django-container-manager that is not exactly 1.0.14's, or one already
    converted: nothing was changed. The message names what was found."""


def _columns(connection, cursor, table: str) -> set[str]:
    return {c.name for c in connection.introspection.get_table_description(cursor, table)}


def _recorded_migrations(connection, cursor, tables: set[str]) -> set[str]:
    if "django_migrations" not in tables:
        return set()
    cursor.execute("SELECT name FROM django_migrations WHERE app = %s", [APP])
    return {name for (name,) in cursor.fetchall()}


def problems_1x(connection, cursor, recorded: set[str], tables: set[str]) -> list[str]:
    """What differs from django-container-manager 1.0.14's schema: empty when it matches."""
    problems = []
    if unknown := sorted(recorded - MIGRATIONS_1X):
        problems.append(f"django_migrations has unknown {APP} migrations: {', '.join(unknown)}")
    if missing := sorted(MIGRATIONS_1X - recorded):
        problems.append(f"django_migrations lacks {APP} migrations: {', '.join(missing)}")
    for table, expected in TABLES_1X.items():
        if table not in tables:
            problems.append(f"table {table} is missing")
            continue
        found = _columns(connection, cursor, table)
        if lacking := sorted(expected - found):
            problems.append(f"table {table} lacks columns: {', '.join(lacking)}")
        if extra := sorted(found - expected):
            problems.append(f"table {table} has unknown columns: {', '.join(extra)}")
    problems += [
        f"table {legacy} already exists (set aside by an earlier conversion?)"
        for legacy in LEGACY_TABLES.values()
        if legacy in tables
    ]
    return problems


def holds_1x(connection=default_connection) -> bool:
    """Whether this database has django-container-manager's tables under our label (any
    version): its job table, or its migration names in django_migrations."""
    with connection.cursor() as cursor:
        tables = set(connection.introspection.table_names(cursor))
        recorded = _recorded_migrations(connection, cursor, tables)
        marked = MARKER_TABLE in tables and MARKER_COLUMN in _columns(
            connection, cursor, MARKER_TABLE
        )
    return marked or bool(recorded & (MIGRATIONS_1X - {"0001_initial"}))


def check_1x(connection=default_connection) -> None:
    """Raise LegacySchemaError naming each difference unless the database is exactly
    django-container-manager 1.0.14's."""
    with connection.cursor() as cursor:
        tables = set(connection.introspection.table_names(cursor))
        recorded = _recorded_migrations(connection, cursor, tables)
        problems = problems_1x(connection, cursor, recorded, tables)
    if problems:
        raise LegacySchemaError(
            "this database holds django-container-manager tables under the container_manager "
            "label, but not as its version 1.0.14 leaves them, the only one converted: "
            + "; ".join(problems)
            + ". Nothing was changed. Upgrade django-container-manager to 1.0.14 and run its "
            "migrate first (see the README, Coming from django-container-manager)."
        )


def set_aside_1x(apps, schema_editor) -> None:
    """Our 0002's first step (RunPython): on a django-container-manager 1.0.14 database,
    keep its tables as ``container_manager_legacy_*`` and create ours, as our 0001 would
    have. Anywhere else it does nothing."""
    connection = schema_editor.connection
    if not holds_1x(connection):
        return
    check_1x(connection)
    quote = schema_editor.quote_name
    with connection.cursor() as cursor:
        for table in SET_ASIDE_ORDER:
            # A copy, not a rename: renamed, the old indexes would keep names that ours
            # take. Same columns, same values; the original goes in this same transaction.
            legacy = LEGACY_TABLES[table]
            cursor.execute(f"CREATE TABLE {quote(legacy)} AS SELECT * FROM {quote(table)}")
            cursor.execute(
                f"SELECT (SELECT COUNT(*) FROM {quote(table)}), COUNT(*) FROM {quote(legacy)}"
            )
            kept, copied = cursor.fetchone()
            if kept != copied:
                raise LegacySchemaError(
                    f"{legacy}: copied {copied} rows of {kept}; nothing was changed"
                )
        for table in SET_ASIDE_ORDER:
            cursor.execute(f"DROP TABLE {quote(table)}")
    _create_our_tables(schema_editor)


def _create_our_tables(schema_editor) -> None:
    """Run our 0001_initial, which Django believes applied (the old package's row says so)."""
    loader = MigrationLoader(schema_editor.connection, ignore_no_migrations=True)
    key = (APP, "0001_initial")
    state = loader.project_state(key, at_end=False)
    loader.graph.nodes[key].apply(state, schema_editor)
    # Its indexes and foreign keys now, as the end of its own migration would: our 0002
    # alters these tables next (on SQLite by rebuilding them).
    for statement in schema_editor.deferred_sql:
        schema_editor.execute(statement)
    schema_editor.deferred_sql = []
