from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "apps.runs"
    label = "runs"
    verbose_name = "Runs"

    def ready(self) -> None:
        from django.conf import settings

        from apps.core.jobs import periodic_register

        # Every worker serving the runs queue enqueues the reaper once per interval (apps/core/jobs.py).
        periodic_register(
            name="reap-runs",
            func="apps.runs.tasks.reap_runs_job",
            every_s=settings.KEEL_REAPER_INTERVAL_S,
            queue="runs",
        )
