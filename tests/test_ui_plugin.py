"""The queue view plugin (plugins/backorders_ui): served by uvicorn on 127.0.0.1 against a database with demo data and
looked at in headless Chromium (screenshots in tests/artifacts/ui/, git-ignored); and mounted in Airflow's own API
server app, where it is behind Airflow's login and listed as a navigation entry."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts" / "ui"
sys.path.insert(0, str(ROOT / "plugins"))

from backorders import cycle, db, demo_data, schema  # noqa: E402
from backorders.cli import schedule_times, simulate_logistics  # noqa: E402
from tests.conftest import scratch_database  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DEMO_START = demo_data.datetime(2026, 3, 2, tzinfo=demo_data.UTC)


@pytest.fixture(scope="module")
def demo_url(pg_admin_url):
    """A database with demo data after two days of runs (module-wide: the pages only read it)."""
    with scratch_database(pg_admin_url, "ui_demo") as url:
        schema.upgrade(url)
        data = demo_data.generate_demo(400, seed=5, start=DEMO_START, days=2)
        with db.transaction(url) as conn:
            demo_data.write_landing(conn, data)
        for t in schedule_times(DEMO_START, 2):
            simulate_logistics(url, t)
            cycle.run_cycle(url, t)
        yield url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo_url):
    """The plugin's app under uvicorn on 127.0.0.1 (auth switched off: Airflow's login is tested further down)."""
    import uvicorn

    from backorders_ui.app import create_app

    app = create_app(db_url=lambda: demo_url, auth=lambda: None)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(10)


def get(url: str) -> tuple[int, str]:
    import httpx

    r = httpx.get(url, timeout=30)
    return r.status_code, r.text


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def screenshot(url: str, name: str, height: int = 1000) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / f"{name}.png"
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        proc = chromium([f"--screenshot={out}", f"--window-size=1400,{height}", url], Path(profile))
    assert out.exists() and out.stat().st_size > 20_000, (proc.returncode, proc.stderr[-2000:])
    return out


def dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = chromium(["--dump-dom", url], Path(profile))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def png_colors(path: Path) -> int:
    """How many distinct colours a PNG has (a blank or error page has very few)."""
    import zlib

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, width, height, ctype = 8, [], 0, 0, 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, ctype = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big"), body[9]
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + n
    raw = zlib.decompress(b"".join(chunks))
    bpp = {2: 3, 6: 4}[ctype]
    stride = width * bpp + 1
    # sample unfiltered bytes of a few rows: enough to tell a real page from an empty one
    seen = set()
    for y in range(0, height, max(1, height // 40)):
        row = raw[y * stride + 1:(y + 1) * stride]
        seen.update(row[i:i + 3] for i in range(0, len(row), bpp * 7))
    return len(seen)


# ------------------------------------------------------------------------------------------------ the pages
def test_pages_render_the_queues_with_filters(server, demo_url):
    status, html = get(server + "/")
    assert status == 200
    assert "Allocation queue" in html and 'id="queue"' in html
    assert html.count('class="label BACKORDER"') > 0                      # the backorder label
    assert 'class="why"' in html                                         # why each line waits
    assert html.count("<svg") == 2 and "Waiting lines by age" in html and "Fill rate per run" in html
    assert "<script" not in html and 'src="http' not in html and 'href="http' not in html     # nothing from a CDN

    from backorders import queue_views as qv

    with qv.read_only(demo_url) as conn:
        all_rows = qv.allocation_queue(conn, qv.Filters())
        us = qv.allocation_queue(conn, qv.Filters(channel="US_WEB", min_age=1))
        first = all_rows.rows[0]
    assert all_rows.total > 20 and 0 < us.total < all_rows.total
    status, html = get(server + "/?channel=US_WEB&min_age=1")
    assert f"{us.total:,} waiting lines" in html
    assert "<td>EU_WEB</td>" not in html and "<td>US_B2B</td>" not in html
    status, html = get(server + f"/?sku={quote(first['sku'])}")
    assert status == 200 and first["sku"] in html

    status, html = get(server + "/exceptions?severity=high")
    assert status == 200 and 'id="exceptions"' in html
    assert 'class="sev medium"' not in html and 'class="sev low"' not in html

    status, html = get(server + f"/lines/{quote(first['order_id'])}/{quote(first['line_id'])}")
    assert status == 200 and 'id="attempts"' in html and first["line_id"] in html
    assert get(server + "/lines/nope/nope")[0] == 404


def test_the_view_has_no_write_route(server):
    import httpx

    for path in ("/", "/exceptions"):
        assert httpx.post(server + path, timeout=10).status_code == 405


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_screenshots_in_headless_chromium(server, demo_url):
    from backorders import queue_views as qv

    with qv.read_only(demo_url) as conn:
        first = qv.allocation_queue(conn, qv.Filters(min_age=1)).rows[0]
    pages = {
        "allocation_queue": "/",
        "allocation_queue_filtered": "/?channel=US_WEB&min_age=1",
        "exception_queue": "/exceptions",
        "line_attempts": f"/lines/{quote(first['order_id'])}/{quote(first['line_id'])}",
    }
    for name, path in pages.items():
        shot = screenshot(server + path, name)
        assert png_colors(shot) > 30, f"{shot} looks blank"
    # what the browser built from the page: the table rows and both charts are there
    rendered = dom(server + "/")
    assert rendered.count("<tr>") > 20 and rendered.count('class="bar"') == 5 and 'class="series"' in rendered


# ------------------------------------------------------------------------------------------------ inside Airflow
AIRFLOW_PROBE = r"""
import json, sys
from starlette.testclient import TestClient
from airflow.api_fastapi.app import create_app, get_auth_manager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

app = create_app("core")
client = TestClient(app)
out = {}
r = client.get("/backorders/", follow_redirects=False)
out["anonymous"] = [r.status_code, r.headers.get("location")]
r = client.get("/backorders/", headers={"Authorization": "Bearer not-a-token"})
out["bad_token"] = r.status_code
viewer = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="ops", role="VIEWER"))
r = client.get("/backorders/", cookies={"_token": viewer})
out["viewer"] = [r.status_code, "Allocation queue" in r.text, 'href="/backorders/exceptions"' in r.text]
r = client.post("/backorders/", cookies={"_token": viewer})
out["post"] = r.status_code
r = client.get("/api/v2/plugins", headers={"Authorization": "Bearer " + viewer})
plugins = [p for p in r.json()["plugins"] if p["name"] == "backorders"]
out["plugin"] = plugins[0] if plugins else None
print("@@PROBE " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    from backorders.cli import airflow_env

    home = tmp_path_factory.mktemp("airflow_home_ui")
    env = airflow_env({k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    env["AIRFLOW_HOME"] = str(home)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True)
    return env


def test_inside_airflow_behind_its_login_with_a_navigation_entry(airflow_home, demo_url):
    env = {**airflow_home, "BACKORDERS_UI_DB_URL": demo_url}
    proc = subprocess.run([sys.executable, "-c", AIRFLOW_PROBE], env=env, capture_output=True, text=True,
                          timeout=300, cwd=str(ROOT))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("@@PROBE ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[0][8:])
    status, location = out["anonymous"]
    assert status == 303 and location.startswith("/auth/login")          # Airflow's own login page
    assert out["bad_token"] == 403
    assert out["viewer"] == [200, True, True]                            # links stay under /backorders
    assert out["post"] == 405                                            # read-only
    plugin = out["plugin"]
    assert plugin and plugin["fastapi_apps"][0]["url_prefix"] == "/backorders"
    view = plugin["external_views"][0]
    assert (view["href"], view["url_route"], view["destination"]) == ("/backorders/", "backorder-queues", "nav")
    assert "backorders_ui.run_notes" in " ".join(plugin["listeners"])
