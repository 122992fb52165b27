from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.accounts.models import Role, Workspace
from apps.accounts.tenancy import Actor
from apps.core.problems import Problem
from apps.runs.models import Run
from apps.runs.serializers import run_body
from apps.runs.services import run_execute, run_start
from apps.workflows.models import Workflow


class Command(BaseCommand):
    help = (
        "Start a run of a workflow and print the run body as JSON. sync (default) executes it here and "
        "prints the finished run; async enqueues it for a worker and prints it queued. Exit status: 0 "
        "succeeded or queued, 1 refused (unknown workflow, invalid input), 2 the run failed or was cancelled."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="workflow slug")
        parser.add_argument("--workspace", required=True, help="workspace slug")
        parser.add_argument("--input", required=True, help='the input as JSON, e.g. \'{"text": "..."}\'')
        parser.add_argument("--mode", choices=[Run.Mode.SYNC, Run.Mode.ASYNC], default=Run.Mode.SYNC)

    def handle(self, *args: Any, slug: str, workspace: str, input: str, mode: str, **options: Any) -> None:
        ws = Workspace.objects.filter(slug=workspace).first()
        if ws is None:
            raise CommandError(f"No workspace with slug {workspace!r}.")
        workflow = Workflow.objects.for_workspace(ws).filter(slug=slug).first()
        if workflow is None:
            raise CommandError(f"No workflow {slug!r} in workspace {workspace!r}.")
        try:
            value = json.loads(input)
        except ValueError as exc:
            raise CommandError(f"--input is not JSON: {exc}") from None
        try:
            started = run_start(
                workflow=workflow, actor=Actor(workspace=ws, role=Role.OWNER), input=value, mode=mode, claim=True
            )
        except Problem as exc:
            details = "".join(f"\n  {e['field']}: {e['message']}" for e in exc.errors or [])
            raise CommandError(f"{exc.detail_text}{details}") from None
        if mode == Run.Mode.SYNC:
            run_execute(run_id=started.run.pk, claim=started.claim, steps=started.steps)
        run = Run.objects.select_related("workflow", "workflow_version").get(pk=started.run.pk)
        self.stdout.write(json.dumps(run_body(run), indent=2))
        if run.status in (Run.Status.FAILED, Run.Status.CANCELLED):
            sys.exit(2)
