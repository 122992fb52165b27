"""No Docker engine runs here: check by reading that docker-compose.yml and the Dockerfile name real things."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]


def test_compose_services_run_commands_that_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "worker", "scheduler"} <= set(services)
    commands = get_commands()
    for name, service in services.items():
        command = service.get("command") or []
        if command[:2] == ["python", "manage.py"]:
            assert command[2] in commands, f"{name}: manage.py {command[2]} does not exist"
        if name in {"web", "worker", "scheduler", "migrate"}:
            env = service["environment"]
            assert env["DATABASE_URL"].startswith("postgres://") and env["REDIS_URL"].startswith("redis://")
            assert env["DEBUG"] == "0"


def test_compose_workers_serve_every_queue():
    from django.conf import settings

    worker = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]
    assert set(worker["command"][3:]) == set(settings.RQ_QUEUE_NAMES)


def test_dockerfile_serves_the_wsgi_application_and_installs_the_pinned_requirements():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -r requirements.txt" in dockerfile
    target = re.search(r'"(config\.\w+):application"', dockerfile).group(1)
    assert (ROOT / (target.replace(".", "/") + ".py")).exists()
    assert "collectstatic" in dockerfile
