from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "apps.usage"
    label = "usage"
    verbose_name = "Usage"

    def ready(self) -> None:
        from django.conf import settings

        from apps.core.jobs import periodic_register

        # The backstop for budget holds no reaper attributed to a run (see budget_release_stale).
        periodic_register(
            name="budget-release-stale",
            func="apps.usage.tasks.release_stale_reservations_job",
            every_s=settings.KEEL_BUDGET_SWEEP_INTERVAL_S,
            queue="runs",
        )
