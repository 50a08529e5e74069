"""The README's demo command, end to end: it serves a login page, the admin lists the records,
and Ctrl-C stops every process it started."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.processes import isolated_env

ROOT = Path(__file__).resolve().parent.parent


def _port_open(url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def _stop(process: subprocess.Popen) -> None:
    """Stop the demo as a person does (Ctrl-C: it stops the sandboxes, the cluster and the web
    server, each in a session of its own); kill it only if it does not stop."""
    process.send_signal(signal.SIGINT)
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    env = isolated_env(DATABASE_URL=f"sqlite:///{workdir / 'db.sqlite3'}", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "demo",
            "--port",
            "0",
            "--customers",
            "6",
            "--log-dir",
            str(workdir / "logs"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("Log in at"):
            break
    login = re.search(r"Log in at (\S+) as (\S+) / (\S+)", "\n".join(lines))
    if login is None:
        _stop(process)
        pytest.fail("the demo did not announce its login:\n" + "\n".join(lines))
    yield {
        "process": process,
        "lines": lines,
        "admin_url": login.group(1),
        "username": login.group(2),
        "password": login.group(3),
        "sandbox_urls": re.findall(r"sandbox: (http://\S+)", "\n".join(lines)),
    }
    if process.poll() is None:
        _stop(process)


def test_the_demo_serves_a_login_page(demo):
    response = requests.get(demo["admin_url"] + "login/", timeout=10)
    assert response.status_code == 200
    assert 'name="password"' in response.text


def test_the_demo_login_lists_the_sync_records_in_the_admin(demo):
    session = requests.Session()
    login_url = demo["admin_url"] + "login/"
    session.get(login_url, timeout=10)
    response = session.post(
        login_url,
        data={
            "username": demo["username"],
            "password": demo["password"],
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "next": "/admin/reconciliation/syncrecord/",
        },
        headers={"Referer": login_url},
        timeout=10,
    )
    assert response.status_code == 200
    assert "Sync records" in response.text
    assert re.search(r"\b\d+ sync records\b", response.text)
    assert "cus_" in response.text or "in_" in response.text


def _console(demo, path: str) -> str:
    session = requests.Session()
    login_url = demo["admin_url"] + "login/"
    session.get(login_url, timeout=10)
    response = session.post(
        login_url,
        data={
            "username": demo["username"],
            "password": demo["password"],
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "next": path,
        },
        headers={"Referer": login_url},
        timeout=10,
    )
    assert response.status_code == 200
    return response.text


def test_the_demo_writes_aipress24_customers_and_purchases_to_the_sandbox_dolibarr(demo):
    """The sample's 12 paid purchases become Dolibarr invoices (FA…), its paying organisations
    and individual buyer thirdparties, as the console's record list shows them."""
    summary = next(line for line in demo["lines"] if "sync records:" in line)
    assert "16 aipress24 purchases" in summary
    purchases = _console(demo, "/console/records/?source=aipress24&kind=purchase&state=synced")
    rows = re.findall(r'id="record-(\d+)"', purchases)
    assert len(set(rows)) == 12
    assert len(set(re.findall(r"\bFA\d{4}-\d{4}\b", purchases))) == 12
    for kind, paying in (("organisation", 5), ("user", 1)):
        page = _console(demo, f"/console/records/?source=aipress24&kind={kind}&state=synced")
        assert len(set(re.findall(r'id="record-(\d+)"', page))) == paying


def test_ctrl_c_stops_every_process_the_demo_started(demo):
    process = demo["process"]
    assert all(_port_open(url) for url in demo["sandbox_urls"])
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    assert "every process it started has ended" in rest
    assert not any(_port_open(url) for url in [*demo["sandbox_urls"], demo["admin_url"]])
