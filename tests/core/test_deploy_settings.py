from __future__ import annotations

import secrets

import pytest
from cryptography.fernet import Fernet

from tests.support.processes import manage

PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "KEEL_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    "ALLOWED_HOSTS": "keel.example.com",
    "KEEL_HTTPS": "1",
    "LOG_FORMAT": "json",
}


@pytest.mark.integration
def test_check_deploy_reports_nothing_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "DEBUG", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.integration
@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"SECRET_KEY": None}, "SECRET_KEY"),
        ({"KEEL_ENCRYPTION_KEYS": "not-a-fernet-key"}, "KEEL_ENCRYPTION_KEYS"),
        ({"DATABASE_URL": "mysqlish://nope"}, "DATABASE_URL"),
        ({"KEEL_MAX_REQUEST_BYTES": "lots"}, "KEEL_MAX_REQUEST_BYTES"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"REDIS_URL": "http://127.0.0.1"}, "REDIS_URL"),
    ],
)
def test_bad_environment_value_stops_start_up_naming_the_variable(override, named):
    result = manage("check", env={**PRODUCTION_ENV, **override})
    assert result.returncode != 0
    assert named in result.stderr.strip().splitlines()[-1]
