"""`make run`'s serving half (scripts/run.sh) with the embedded defaults: no DATABASE_URL, no REDIS_URL."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.support.processes import free_port, running, wait_http


@pytest.mark.integration
def test_run_script_serves_health_admin_and_api_docs_with_embedded_defaults(tmp_path):
    port = free_port()
    log = tmp_path / "run.log"
    env = {"DATABASE_URL": None, "REDIS_URL": None, "KEEL_VAR_DIR": str(tmp_path / "var"), "PORT": str(port)}
    with running(["bash", "scripts/run.sh"], env=env, log=log) as proc:
        base = f"http://127.0.0.1:{port}"
        assert wait_http(f"{base}/healthz", timeout=120, proc=proc).status_code == 200
        assert httpx.get(f"{base}/admin/login/").status_code == 200
        docs = httpx.get(f"{base}/api/docs/")
        assert docs.status_code == 200
        # The page's scripts are served by Keel itself (no CDN on a self-hosted network).
        scripts = re.findall(r'<script src="([^"]+)"', docs.text)
        assert scripts and all(src.startswith("/static/") for src in scripts), scripts
        assert all(httpx.get(f"{base}{src}").status_code == 200 for src in scripts)
        assert httpx.get(f"{base}/api/schema/").status_code == 200
        assert httpx.get(f"{base}/readyz").json()["status"] == "ok"
        output = log.read_text()
        match = re.search(r"Demo sign-in: (\S+) / (\S+)", output)
        assert match, output[-3000:]
        # The printed password signs in to the admin.
        with httpx.Client(base_url=base) as browser:
            page = browser.get("/admin/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
            signed_in = browser.post(
                "/admin/login/?next=/admin/",
                data={"csrfmiddlewaretoken": token, "username": match.group(1), "password": match.group(2)},
                headers={"Referer": f"{base}/admin/login/"},
            )
            assert signed_in.status_code == 302 and signed_in.headers["location"] == "/admin/"
        key = re.search(r"Demo API key \(shown once\): (\S+)", output).group(1)
        assert (
            httpx.get(f"{base}/api/v1/me/", headers={"Authorization": f"Bearer {key}"}).json()["workspace"]["slug"]
            == "demo"
        )
    assert (tmp_path / "var" / "keel.sqlite3").exists()
