"""docs/configuration.md lists every environment variable config/settings.py reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_environment_variable_in_settings_is_documented():
    settings_source = (ROOT / "config" / "settings.py").read_text()
    read = set(re.findall(r'env_\w+\(\s*"([A-Z0-9_]+)"', settings_source))
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)`", (ROOT / "docs" / "configuration.md").read_text(), re.MULTILINE))
    assert len(read) > 20
    assert read - documented == set(), "undocumented variables"
    assert documented - read - {"DATABASE_URL"} == set(), "documented variables nobody reads"
