"""Acceptance 10: after `make run`, the README's curl example starts a sample workflow and prints its output."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import ROOT, child_env, free_port, running, wait_http


def readme_curl_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"<!-- curl-example:start -->(.*?)<!-- curl-example:end -->", readme, re.DOTALL)
    assert section, "README.md has the curl-example markers"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.DOTALL)
    assert block, "the curl example is a ```bash block"
    return block.group(1)


@pytest.mark.integration
def test_the_readme_curl_example_starts_a_sample_workflow_and_prints_its_output(tmp_path: Path):
    port = free_port()
    log = tmp_path / "run.log"
    env = {"DATABASE_URL": None, "REDIS_URL": None, "KEEL_VAR_DIR": str(tmp_path / "var"), "PORT": str(port)}
    with running(["bash", "scripts/run.sh"], env=env, log=log) as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=180, proc=proc)
        key = re.search(r"Demo API key \(shown once\): (\S+)", log.read_text())
        assert key, log.read_text()[-3000:]
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_curl_block()],
            env=child_env({"KEEL_API_KEY": key.group(1), "KEEL_URL": f"http://127.0.0.1:{port}"}),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, (result.stdout, result.stderr, log.read_text()[-3000:])
    status, _, summary = result.stdout.strip().partition(" ")
    assert status == "succeeded", result.stdout
    assert len(summary) > 10, result.stdout
    assert "Sample workflow: summarise" in log.read_text()
