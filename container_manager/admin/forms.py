"""The admin's forms: JSON boxes that may be cleared, and secret values that are never shown.

Secret environment values are never shown, to anyone: forms show them as ``••••••``, and a
masked value left as it is keeps the stored (encrypted) one.
"""

from collections.abc import Callable, Mapping
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db import models

from .. import secrets
from ..executors import executor_types
from ..fields import JSONFormField
from ..models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost, RegistryCredential
from ..routing import check_routable


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


# Webhook URLs typed without a scheme are taken as https:// (Django 6's default).
URL_FIELDS: Mapping[type[models.Field], Mapping[str, Any]] = {
    models.URLField: {"assume_scheme": "https"}
}


class EnvironmentVariableTemplateForm(forms.ModelForm):
    webhook_url = EnvironmentVariableTemplate._meta.get_field("webhook_url").formfield(
        **URL_FIELDS[models.URLField]
    )

    class Meta:
        model = EnvironmentVariableTemplate
        fields = ("name", "description", "environment_variables", "webhook_url")
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
