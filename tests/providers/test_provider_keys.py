"""Acceptance 7: a provider key is stored encrypted, never appears in API responses or logs, and
survives a key rotation (`rotate_provider_keys` with a new first key)."""

from __future__ import annotations

import logging

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import CommandError, call_command
from django.db import connection

from apps.providers.crypto import secret_decrypt
from apps.providers.gateway import CallContext, gateway_complete
from apps.providers.models import Provider
from apps.providers.simulator import key_fingerprint
from tests.support.simulator import sim_model
from tests.support.tenancy import key_client

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

SECRET = "sk-live-Xq7-this-must-never-leak-42"


def raw_column(provider_id) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key_encrypted FROM providers_provider WHERE id = %s", [provider_id])
        return cursor.fetchone()[0]


def test_a_provider_key_is_encrypted_at_rest_hidden_everywhere_and_survives_rotation(
    simulator, workspace, settings, caplog
):
    old_key = settings.KEEL_ENCRYPTION_KEYS[0]
    admin = key_client(workspace)
    caplog.set_level(logging.DEBUG)

    # Through the API: the answer never carries the key, only that there is one.
    created = admin.post(
        "/api/v1/providers/",
        {"name": "Sim", "kind": "simulator", "base_url": simulator.base_url, "api_key": SECRET},
        format="json",
    )
    assert created.status_code == 201 and created.json()["has_api_key"] is True
    provider_id = created.json()["id"]
    responses = [
        created,
        admin.get("/api/v1/providers/"),
        admin.get(f"/api/v1/providers/{provider_id}/"),
        admin.patch(f"/api/v1/providers/{provider_id}/", {"timeout_s": 9}, format="json"),
    ]
    for response in responses:
        assert SECRET not in response.content.decode()
    # The raw column holds a Fernet token of the key, not the key.
    stored = raw_column(provider_id)
    assert SECRET not in stored and stored.startswith("gAAAA")
    assert Fernet(old_key.encode()).decrypt(stored.encode()).decode() == SECRET

    # A real call sends the key upstream (the simulator saw its fingerprint), yet no log line holds it.
    sim_model(Provider.objects.get(pk=provider_id), alias="fast")
    gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=[{"role": "user", "content": "hi"}]
    )
    assert simulator.stats()["api_keys"] == {key_fingerprint(SECRET): 1}
    assert "provider_call" in caplog.text  # the gateway's lines were captured ...
    assert SECRET not in caplog.text  # ... and none of them, nor any other, holds the key

    # Rotation: a new first key; the command re-encrypts under it; the old key can then go.
    new_key = Fernet.generate_key().decode()
    settings.KEEL_ENCRYPTION_KEYS = [new_key, old_key]
    call_command("rotate_provider_keys")
    rotated = raw_column(provider_id)
    assert rotated != stored and SECRET not in rotated
    assert Fernet(new_key.encode()).decrypt(rotated.encode()).decode() == SECRET
    with pytest.raises(InvalidToken):
        Fernet(old_key.encode()).decrypt(rotated.encode())

    settings.KEEL_ENCRYPTION_KEYS = [new_key]
    assert secret_decrypt(rotated) == SECRET
    gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=[{"role": "user", "content": "again"}]
    )
    assert simulator.stats()["api_keys"] == {key_fingerprint(SECRET): 2}
    assert SECRET not in caplog.text


def test_rotation_reports_keys_no_configured_key_can_read_and_fails(workspace, settings):
    Provider.objects.create(
        workspace=workspace,
        name="Orphan",
        kind="openai",
        api_key_encrypted=Fernet(Fernet.generate_key()).encrypt(b"sk-x").decode(),
    )
    with pytest.raises(CommandError, match="acme/Orphan"):
        call_command("rotate_provider_keys")
