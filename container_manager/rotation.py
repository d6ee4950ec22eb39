"""Re-encrypting every stored secret with the current key (see ``secrets`` for the format)."""

from dataclasses import dataclass, field

from .exceptions import SecretError
from .models import ContainerJob, EnvironmentVariableTemplate
from .secrets import is_secret, reseal, reseal_env_text


@dataclass
class ReencryptResult:
    jobs: int = 0  # jobs whose stored environment was rewritten
    templates: int = 0
    values: int = 0  # secret values re-encrypted (or sealed, if they were stored in clear)
    failed: list[str] = field(default_factory=list)  # "job <id>: NAME", "template <name>: NAME"


def reencrypt_all(batch_size: int = 500) -> ReencryptResult:
    """Re-encrypt every stored secret with the first key; seal any secret still in clear.

    Run after putting a new key first in ``ENCRYPTION_KEYS``; the old key can be dropped once
    this reports no failures. Values no configured key opens are left as they are and
    listed in ``failed`` (variable names only).
    """
    result = ReencryptResult()
    templates = EnvironmentVariableTemplate.objects.exclude(environment_variables="")
    for template in templates.only("pk", "name", "environment_variables").iterator(batch_size):
        text, count, failed = reseal_env_text(template.environment_variables)
        result.failed += [f"template {template.name}: {name}" for name in failed]
        if count:
            EnvironmentVariableTemplate.objects.filter(pk=template.pk).update(
                environment_variables=text
            )
            result.templates += 1
            result.values += count

    jobs = ContainerJob.objects.exclude(environment_overrides={})
    for pk, env in jobs.values_list("pk", "environment_overrides").iterator(batch_size):
        if not isinstance(env, dict):
            continue
        new, count = {}, 0
        for key, value in env.items():
            if isinstance(value, str) and is_secret(key, value):
                try:
                    value = reseal(value, key)
                    count += 1
                except SecretError:
                    result.failed.append(f"job {pk}: {key}")
            new[key] = value
        if count:
            # A plain UPDATE of this one column: a job's status and outcome are not touched.
            ContainerJob.objects.filter(pk=pk).update(environment_overrides=new)
            result.jobs += 1
            result.values += count
    return result
