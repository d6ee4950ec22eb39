from django.apps import AppConfig


class ContainerManagerConfig(AppConfig):
    name = "container_manager"
    verbose_name = "Container jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from .checks import register_checks

        register_checks()
