"""The Django admin: configuration over the models; actions call ``container_manager.api``.

Secret environment values are never shown, to anyone: forms show them as ``••••••``, and a
masked value left as it is keeps the stored (encrypted) one. Release, cancel, retry and host
health checks are offered to, and run for, only users with the matching permission (release:
``change_containerjob``, as for editing a held job).
"""

from collections.abc import Callable
from typing import cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError

from . import api, secrets
from .executors import executor_types
from .fields import JSONFormField
from .models import (
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    ExecutorHostQuerySet,
    JobAttempt,
    RegistryCredential,
    Worker,
)
from .routing import check_routable
from .serializers import validation_error_lines
from .states import InvalidTransition, JobStatus


def registered_executor_types():
    return [(name, name) for name in sorted(executor_types())]


class BlankJSONForm(forms.ModelForm):
    """A cleared JSON box means empty (``[]`` / ``{}``), not NULL, which the columns refuse."""

    # field name -> what makes its empty value (list, dict)
    blank_json: dict[str, Callable[[], object]] = {}

    def clean(self):
        super().clean()
        cleaned = self.cleaned_data  # what ModelForm.clean returns, typed as possibly None
        for name, empty in self.blank_json.items():
            if name in cleaned and cleaned[name] is None:
                cleaned[name] = empty()
        return cleaned


class ExecutorHostForm(BlankJSONForm):
    executor_type = forms.ChoiceField(choices=registered_executor_types)
    blank_json = {"executor_config": dict, "labels": dict, "policy": dict}

    class Meta:
        model = ExecutorHost
        fields = (
            "name",
            "executor_type",
            "connection_string",
            "tls_verify",
            "tls_ca_cert",
            "tls_client_cert",
            "tls_client_key",
            "executor_config",
            "is_active",
            "weight",
            "max_concurrent_jobs",
            "labels",
            "policy",
            "allow_insecure",
        )


@admin.register(ExecutorHost)
class ExecutorHostAdmin(admin.ModelAdmin):
    form = ExecutorHostForm
    list_display = (
        "name",
        "executor_type",
        "connection_string",
        "is_active",
        "health_status",
        "last_health_check",
        "running_jobs",
    )
    list_filter = ("executor_type", "is_active", "health_status")
    search_fields = ("name", "connection_string")
    readonly_fields = (
        "health_status",
        "health_message",
        "last_health_check",
        "created_at",
        "updated_at",
    )
    actions = ["check_health"]

    def get_queryset(self, request):
        # The default manager's queryset, which the type stubs know only as a QuerySet.
        return cast(ExecutorHostQuerySet, super().get_queryset(request)).with_load()

    @admin.display(description="running / max", ordering="load")
    def running_jobs(self, host):
        return f"{host.load} / {host.max_concurrent_jobs}"

    @admin.action(description="Check health of the selected hosts", permissions=["change"])
    def check_health(self, request, queryset):
        if not self.has_change_permission(request):
            raise PermissionDenied
        for host in queryset:
            try:
                health = host.check_health()
            except Exception as error:  # noqa: BLE001 - report it, go on with the others
                self.message_user(request, f"{host.name}: check failed: {error!r}", messages.ERROR)
                continue
            state, level = (
                ("healthy", messages.SUCCESS) if health.healthy else ("unhealthy", messages.ERROR)
            )
            self.message_user(request, f"{host.name}: {state}: {health.message}", level)


HIDDEN_HELP = (
    " Secret values (variables named like a password, token or key) are stored encrypted "
    f"and shown as {secrets.MASK}; leave {secrets.MASK} to keep a value, or type a new one."
)


def hidden_values_error(names):
    return ValidationError(
        f"the value of {', '.join(names)} is hidden ({secrets.MASK}) and there is no stored "
        "value to keep: type it again"
    )


class _Redisplayed:
    """A form's own input shown again after an error: new secret values sealed, not masked.

    Masking them would lose what was just typed (a masked value means "keep the stored one");
    sealed, they come back as they were typed without ever being shown in clear.
    """


class _RedisplayedDict(_Redisplayed, dict):
    pass


class _RedisplayedText(_Redisplayed, str):
    pass


def _seal_typed(key, value):
    if not isinstance(value, str) or value.strip() == secrets.MASK or secrets.is_sealed(value):
        return value
    return secrets.seal(value, key) if secrets.is_secret_key(key) else value


class MaskedEnvironmentField(JSONFormField):
    """Job overrides as JSON, with secret values shown as MASK."""

    def bound_data(self, data, initial):
        value = super().bound_data(data, initial)
        if isinstance(value, dict):
            return _RedisplayedDict({key: _seal_typed(key, v) for key, v in value.items()})
        return value

    def prepare_value(self, value):
        if isinstance(value, dict) and not isinstance(value, _Redisplayed):
            value = secrets.mask_environment(value)
        return super().prepare_value(value)

    def has_changed(self, initial, data):
        if isinstance(initial, dict):
            initial = secrets.mask_environment(initial)
        return super().has_changed(initial, data)


class MaskedEnvironmentTextField(forms.CharField):
    """Template ``KEY=value`` text, with secret values shown as MASK."""

    widget = forms.Textarea

    def bound_data(self, data, initial):
        if not isinstance(data, str):
            return data
        return _RedisplayedText(secrets.map_env_text(data, _seal_typed))

    def prepare_value(self, value):
        if isinstance(value, str) and not isinstance(value, _Redisplayed):
            return secrets.mask_env_text(value)
        return value

    def has_changed(self, initial, data):
        initial = secrets.mask_env_text(initial) if isinstance(initial, str) else initial
        return super().has_changed(initial, data)


class EnvironmentVariableTemplateForm(forms.ModelForm):
    class Meta:
        model = EnvironmentVariableTemplate
        fields = ("name", "description", "environment_variables")
        field_classes = {"environment_variables": MaskedEnvironmentTextField}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["environment_variables"].help_text += HIDDEN_HELP

    def clean_environment_variables(self):
        text = self.cleaned_data["environment_variables"]
        text, missing = secrets.restore_masked_text(text, self.instance.environment_variables)
        if missing:
            raise hidden_values_error(missing)
        return text


@admin.register(EnvironmentVariableTemplate)
class EnvironmentVariableTemplateAdmin(admin.ModelAdmin):
    form = EnvironmentVariableTemplateForm
    list_display = ("name", "description", "updated_at")
    search_fields = ("name", "description")
    readonly_fields = ("created_at", "updated_at")


class JobAttemptInline(admin.TabularInline):
    model = JobAttempt
    fields = (
        "number",
        "status",
        "host",
        "worker",
        "execution_id",
        "exit_code",
        "error",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


WHAT_TO_RUN_FIELDS = (
    "image",
    "command",
    "working_dir",
    "environment_template",
    "environment_overrides",
    "memory_limit",
    "cpu_limit",
    "gpus",
    "timeout_seconds",
    "max_attempts",
    "retry_on",
)
CONFINEMENT_FIELDS = (
    "run_as_user",
    "read_only_root",
    "capabilities",
    "mounts",
    "privileged",
    "host_network",
    "host_pid",
)


class ContainerJobForm(BlankJSONForm):
    blank_json = {
        "command": list,
        "environment_overrides": dict,
        "retry_on": list,
        "capabilities": list,
        "mounts": list,
    }

    class Meta:
        model = ContainerJob
        fields = (
            "name",
            "requested_host",
            "executor_type",
            "host_labels",
            "priority",
            "scheduled_for",
            *WHAT_TO_RUN_FIELDS,
            *CONFINEMENT_FIELDS,
        )
        field_classes = {"environment_overrides": MaskedEnvironmentField}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "environment_overrides" in self.fields:
            self.fields["environment_overrides"].help_text += HIDDEN_HELP.strip()

    def clean_environment_overrides(self):
        value = self.cleaned_data.get("environment_overrides")
        if isinstance(value, dict):
            stored = self.instance.environment_overrides
            stored = stored if isinstance(stored, dict) else {}
            value, missing = secrets.restore_masked(value, stored)
            if missing:
                raise hidden_values_error(missing)
        return value

    def clean(self):
        cleaned = super().clean()
        # As api.create_job does: refused now when no active host could ever take it.
        if self.instance._state.adding and not self.errors:
            try:
                check_routable(self.instance)
            except ValidationError as error:
                self.add_error(None, error)
        return cleaned


OUTCOME_FIELDS = (
    "status",
    "host",
    "execution_id",
    "exit_code",
    "attempts",
    "last_error",
    "peak_memory_bytes",
    "cpu_seconds",
    "stdout",
    "stderr",
    "worker",
    "cancel_requested_at",
    "created_by",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
)


@admin.register(ContainerJob)
class ContainerJobAdmin(admin.ModelAdmin):
    form = ContainerJobForm
    list_display = (
        "short_id",
        "name",
        "status",
        "host",
        "image",
        "exit_code",
        "attempts",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "host")
    list_select_related = ("host",)
    search_fields = ("name", "image", "id", "execution_id")
    readonly_fields = ("id", *OUTCOME_FIELDS)
    fieldsets = (
        (None, {"fields": ("id", "name", "status", "priority", "scheduled_for")}),
        (
            "Where",
            {
                "fields": ("requested_host", "executor_type", "host_labels", "host"),
                "description": "Name a host (or a fallback chain), or ask for an executor "
                "type and labels and let routing choose; the host is where it runs.",
            },
        ),
        ("What to run", {"fields": WHAT_TO_RUN_FIELDS}),
        (
            "Confinement",
            {
                "fields": CONFINEMENT_FIELDS,
                "description": "What the container may do beyond the safe defaults; "
                "each loosening must be allowed by the container policy.",
            },
        ),
        (
            "Outcome",
            {
                "fields": (
                    "execution_id",
                    "exit_code",
                    "attempts",
                    "last_error",
                    "peak_memory_bytes",
                    "cpu_seconds",
                    "stdout",
                    "stderr",
                )
            },
        ),
        (
            "History",
            {
                "fields": (
                    "created_by",
                    "created_at",
                    "queued_at",
                    "started_at",
                    "finished_at",
                    "cancel_requested_at",
                    "worker",
                )
            },
        ),
    )
    inlines = [JobAttemptInline]
    actions = ["release_jobs", "cancel_jobs", "retry_jobs"]

    @admin.display(description="ID", ordering="id")
    def short_id(self, job):
        return str(job.pk)[:8]

    @admin.display(description="environment")
    def environment(self, job):
        """Template and overrides, one KEY=value a line, secret values masked."""
        variables = job.get_environment_display()
        return "\n".join(f"{key}={value}" for key, value in sorted(variables.items())) or "-"

    @staticmethod
    def _started(obj):
        return obj is not None and obj.status not in (JobStatus.PENDING, JobStatus.QUEUED)

    def get_readonly_fields(self, request, obj=None):
        # Once a worker has taken a job, what it runs is history: nothing is editable.
        if self._started(obj):
            names = (field.name for field in obj._meta.fields if field.name != "id")
            return ("id", "environment", *names)
        return self.readonly_fields

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if not self._started(obj):
            return fieldsets
        # Read only, the stored overrides would show sealed tokens: show the masked view.
        return [
            (
                name,
                {
                    **options,
                    "fields": tuple(
                        "environment" if field == "environment_overrides" else field
                        for field in options["fields"]
                    ),
                },
            )
            for name, options in fieldsets
        ]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
            obj.save()
        else:
            # Write only what was edited, never the outcome a worker may be writing now.
            obj.save(update_fields=form.changed_data)

    def has_cancel_permission(self, request, obj=None):
        return request.user.has_perm(f"{self.opts.app_label}.cancel_containerjob")

    def has_retry_permission(self, request, obj=None):
        return request.user.has_perm(f"{self.opts.app_label}.retry_containerjob")

    @admin.action(description="Release selected held jobs", permissions=["change"])
    def release_jobs(self, request, queryset):
        if not self.has_change_permission(request):
            raise PermissionDenied
        released, selected = self._apply(request, queryset, api.release_job)
        self.message_user(
            request,
            f"Released {released} of {selected} selected job{'' if selected == 1 else 's'}.",
            messages.SUCCESS if released else messages.WARNING,
        )

    @admin.action(description="Cancel selected jobs", permissions=["cancel"])
    def cancel_jobs(self, request, queryset):
        if not self.has_cancel_permission(request):
            raise PermissionDenied

        def done(job):
            if job.status == JobStatus.CANCELLED:
                return "cancelled"
            return f"cancel requested (it is {job.status}; its worker stops it)"

        self._apply(request, queryset, api.cancel_job, done)

    @admin.action(description="Retry selected jobs", permissions=["retry"])
    def retry_jobs(self, request, queryset):
        if not self.has_retry_permission(request):
            raise PermissionDenied
        self._apply(request, queryset, api.retry_job, lambda job: "queued again")

    def _apply(self, request, queryset, operation, done=None) -> tuple[int, int]:
        """Run ``operation`` on each job, saying why for each it refused.

        With ``done``, each job it did gets a message too: ``done(job)``. Returns how many
        jobs it did, and of how many.
        """
        succeeded = seen = 0
        for job in queryset.select_related("host"):
            seen += 1
            label = f"Job {job.name or job.pk} ({str(job.pk)[:8]})"
            try:
                job = operation(job)
            except ValidationError as error:
                problem = "; ".join(validation_error_lines(error))
                self.message_user(request, f"{label}: {problem}", messages.ERROR)
            except InvalidTransition as error:
                self.message_user(request, f"{label}: {error}", messages.ERROR)
            else:
                succeeded += 1
                if done is not None:
                    self.message_user(request, f"{label}: {done(job)}", messages.SUCCESS)
        return succeeded, seen


class RegistryCredentialForm(forms.ModelForm):
    # Write-only: the stored password is never sent back to a browser.
    password = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="Stored encrypted and never shown. Leave blank to keep the stored one.",
    )

    class Meta:
        model = RegistryCredential
        fields = ("registry", "username", "password")

    def clean_password(self):
        password = self.cleaned_data.get("password")
        if password:
            return password
        if self.instance.pk:
            return self.instance.password  # unchanged, still sealed
        raise ValidationError("is required for a new registry")


@admin.register(RegistryCredential)
class RegistryCredentialAdmin(admin.ModelAdmin):
    form = RegistryCredentialForm
    list_display = ("registry", "username", "updated_at")
    search_fields = ("registry", "username")


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    """Workers register themselves; here they are only looked at (or deleted when stale)."""

    list_display = ("hostname", "pid", "started_at", "last_heartbeat", "stopped_at")
    search_fields = ("hostname",)
    readonly_fields = ("id", "hostname", "pid", "started_at", "last_heartbeat", "stopped_at")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
