"""Fill the hourly rollup from ledger rows written before it existed (usage_record keeps it after)."""

import datetime as dt
import uuid

from django.db import migrations
from django.db.models import Count, Sum
from django.db.models.functions import TruncHour

NIL_UUID = uuid.UUID(int=0)


def backfill(apps, schema_editor):
    UsageRecord = apps.get_model("usage", "UsageRecord")
    UsageHourly = apps.get_model("usage", "UsageHourly")
    rows = (
        UsageRecord.objects.annotate(hour=TruncHour("created_at", tzinfo=dt.UTC))
        .values("workspace_id", "hour", "workflow_id", "model_id", "api_key_id", "status", "cache_hit")
        .annotate(
            calls=Count("id"),
            sum_input=Sum("input_tokens"),
            sum_cached=Sum("cached_input_tokens"),
            sum_output=Sum("output_tokens"),
            sum_cost=Sum("cost_usd"),
            sum_saved=Sum("saved_usd"),
        )
        .order_by()
    )
    UsageHourly.objects.bulk_create(
        [
            UsageHourly(
                workspace_id=row["workspace_id"],
                hour=row["hour"],
                workflow_id=row["workflow_id"] or NIL_UUID,
                model_id=row["model_id"],
                api_key_id=row["api_key_id"] or NIL_UUID,
                status=row["status"],
                cache_hit=row["cache_hit"],
                calls=row["calls"],
                input_tokens=row["sum_input"] or 0,
                cached_input_tokens=row["sum_cached"] or 0,
                output_tokens=row["sum_output"] or 0,
                cost_usd=row["sum_cost"] or 0,
                saved_usd=row["sum_saved"] or 0,
            )
            for row in rows.iterator(chunk_size=2000)
        ],
        batch_size=2000,
    )


def clear(apps, schema_editor):
    apps.get_model("usage", "UsageHourly").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("usage", "0002_add_budgets_and_usage_hourly")]

    operations = [migrations.RunPython(backfill, clear)]
