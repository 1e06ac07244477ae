"""App configuration: registers checks and imports task modules so tasks resolve by path."""

from __future__ import annotations

from django.apps import AppConfig


class QueueAppConfig(AppConfig):
    name = "queueapp"
    verbose_name = "Task queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from queueapp import checks, registry  # noqa: F401  (checks register on import)

        registry.autodiscover()
