from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from apps.runs.services import runs_reap


class Command(BaseCommand):
    help = (
        "Recover runs whose executor died: resume (or fail) running runs with a stale heartbeat, re-enqueue "
        "queued runs whose job was lost, purge expired idempotency keys. Workers do this every "
        "KEEL_REAPER_INTERVAL_S by themselves; this command is for cron, the embedded demo and operators."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        report = runs_reap()
        self.stdout.write(
            f"resumed {len(report.resumed)}, failed {len(report.failed)}, re-enqueued {len(report.requeued)}, "
            f"abandoned calls booked {len(report.abandoned_calls)}, idempotency keys purged "
            f"{report.idempotency_keys_purged}"
        )
        for label, ids in (("resumed", report.resumed), ("failed", report.failed), ("re-enqueued", report.requeued)):
            for run_id in ids:
                self.stdout.write(f"  {label}: {run_id}")
