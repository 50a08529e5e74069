"""`/healthz` says only up or down, to anyone, cheaply; the detail of a failure goes to the log."""

import json
import logging
import os
import socket

import pytest
from django.db import OperationalError, connection

from tests.processes import isolated_env, run_manage

pytestmark = pytest.mark.django_db

REDIS_TEST_URL = os.environ.get("AP24SYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
PRODUCTION_KEY = "prod-" + "k3y" * 20


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def redis_broker(settings):
    """Point the django-q2 broker at a Redis URL (the ORM broker is the default)."""

    def use(url):
        settings.Q_CLUSTER = {
            **{k: v for k, v in settings.Q_CLUSTER.items() if k != "orm"},
            "redis": url,
        }

    return use


def _database_refuses(execute, sql, params, many, context):
    raise OperationalError("server closed the connection unexpectedly")


def test_healthz_is_up_when_the_database_and_the_broker_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "up"}


def test_healthz_answers_with_or_without_the_trailing_slash(client):
    assert client.get("/healthz/").status_code == 200


def test_healthz_answers_head(client):
    assert client.head("/healthz").status_code == 200


def test_healthz_refuses_post_without_asking_for_a_csrf_token(client):
    assert client.post("/healthz").status_code == 405


def test_healthz_is_down_when_the_database_does_not_answer(client):
    with connection.execute_wrapper(_database_refuses):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "down"}


def test_healthz_is_down_when_the_redis_broker_is_unreachable(client, redis_broker):
    redis_broker(f"redis://127.0.0.1:{_closed_port()}/0")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "down"}


@pytest.mark.skipif(not _redis_available(), reason="no Redis on 127.0.0.1:6379 (CI starts one)")
def test_healthz_is_up_when_the_redis_broker_answers(client, redis_broker):
    redis_broker(REDIS_TEST_URL)
    assert client.get("/healthz").json() == {"status": "up"}


def test_healthz_logs_what_is_down_but_never_says_it(client, redis_broker, caplog):
    port = _closed_port()
    redis_broker(f"redis://:s3cret-redis-pass@127.0.0.1:{port}/0")
    with caplog.at_level(logging.WARNING, logger="reconciliation.health"):
        response = client.get("/healthz")
    assert response.content == b'{"status": "down"}'
    assert "Redis broker does not answer" in caplog.text
    assert str(port) in caplog.text


def test_healthz_never_logs_the_redis_password(client, redis_broker, caplog):
    redis_broker(f"redis://:s3cret-redis-pass@127.0.0.1:{_closed_port()}/0")
    with caplog.at_level(logging.DEBUG):
        client.get("/healthz")
    assert "s3cret-redis-pass" not in caplog.text


def test_healthz_needs_no_login_and_starts_no_session(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert not response.cookies


def test_healthz_is_never_cached(client):
    assert "no-store" in client.get("/healthz")["Cache-Control"]


def test_healthz_costs_one_query_on_the_orm_broker(client, settings, django_assert_num_queries):
    settings.Q_CLUSTER = {
        **{k: v for k, v in settings.Q_CLUSTER.items() if k != "redis"},
        "orm": "default",
    }
    with django_assert_num_queries(1):
        client.get("/healthz")


def test_healthz_answers_plain_http_under_production_settings(tmp_path):
    """The load balancer probes over HTTP on the inside; SECURE_SSL_REDIRECT must not send it
    to HTTPS (SECURE_REDIRECT_EXEMPT)."""
    code = (
        "from django.test import Client; "
        "r = Client().get('/healthz', HTTP_HOST='sync.example.org'); "
        "print(r.status_code, r.content.decode())"
    )
    env = isolated_env(
        AP24SYNC_MODE="production",
        SECRET_KEY=PRODUCTION_KEY,
        ALLOWED_HOSTS="sync.example.org",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    result = run_manage(env, "shell", "--no-imports", "-c", code)
    status, _, body = result.stdout.strip().partition(" ")
    assert status == "200", (
        f"{status}: add SECURE_REDIRECT_EXEMPT = [r'^healthz/?$'] to the production block "
        f"of ap24sync/settings.py\n{result.stderr}"
    )
    assert json.loads(body) == {"status": "up"}
