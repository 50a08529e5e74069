"""Settings are read in a fresh interpreter so that each test sees only the variables it sets."""

import json
from pathlib import Path

from tests.processes import isolated_env, run_manage

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_KEY = "prod-" + "k3y" * 20


def _run(*args, **env_overrides):
    return run_manage(isolated_env(**env_overrides), *args)


def _setting(name, **env):
    code = f"from django.conf import settings; print(repr(settings.{name}))"
    return _run("shell", "--no-imports", "-c", code, **env)


def test_the_embedded_default_is_sqlite_and_the_orm_broker():
    engine = _setting("DATABASES['default']['ENGINE']")
    broker = _setting("Q_CLUSTER.get('orm')")
    assert engine.stdout.strip() == "'django.db.backends.sqlite3'"
    assert broker.stdout.strip() == "'default'"


def test_database_url_switches_to_postgresql():
    result = _setting(
        "DATABASES['default']['ENGINE']", DATABASE_URL="postgres://u@127.0.0.1:5432/ap24"
    )
    assert result.stdout.strip() == "'django.db.backends.postgresql'"


def test_redis_url_switches_the_broker_to_redis():
    result = _setting("Q_CLUSTER.get('redis')", REDIS_URL="redis://127.0.0.1:6379/3")
    assert result.stdout.strip() == "'redis://127.0.0.1:6379/3'"


def test_production_without_a_secret_key_refuses_to_start_with_one_clear_line():
    result = _run("check", AP24SYNC_MODE="production", ALLOWED_HOSTS="sync.example.org")
    assert result.returncode != 0
    assert "SECRET_KEY is not set; see .env.example" in result.stderr


def test_production_settings_pass_check_deploy_without_warnings():
    result = _run(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        AP24SYNC_MODE="production",
        SECRET_KEY=PRODUCTION_KEY,
        ALLOWED_HOSTS="sync.example.org",
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_an_unknown_mode_is_refused():
    result = _run("check", AP24SYNC_MODE="staging")
    assert "AP24SYNC_MODE must be 'development' or 'production'" in result.stderr


def test_logs_never_contain_configured_secrets():
    code = (
        "import logging; from django.conf import settings; "
        "logging.getLogger('reconciliation.test').warning("
        "'calling %s with key %s', '/status', settings.DOLIBARR_API_KEY)"
    )
    result = _run("shell", "--no-imports", "-c", code, DOLIBARR_API_KEY="doli-secret-key-123456")
    assert "calling /status with key [redacted]" in result.stderr
    assert "doli-secret-key-123456" not in result.stderr


def test_json_logs_are_one_object_per_line_without_secrets():
    code = (
        "import logging; from django.conf import settings; "
        "logging.getLogger('reconciliation.test').error('key=%s', settings.STRIPE_API_KEY)"
    )
    result = _run(
        "shell", "--no-imports", "-c", code, LOG_JSON="true", STRIPE_API_KEY="sk_test_abcdefgh1234"
    )
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["message"] == "key=[redacted]"
    assert line["level"] == "ERROR"


def test_a_copy_of_env_example_works_as_it_is():
    result = _run("check", AP24SYNC_ENV_FILE=str(ROOT / ".env.example"))
    assert result.returncode == 0, result.stderr


def _variables_read_by_settings():
    import re

    text = (ROOT / "ap24sync" / "settings.py").read_text()
    return set(re.findall(r'env\.\w+\(\s*"([A-Z][A-Z0-9_]+)"', text))


def test_every_variable_the_settings_read_is_in_env_example():
    documented = (ROOT / ".env.example").read_text()
    missing = {name for name in _variables_read_by_settings() if f"\n{name}=" not in documented}
    assert not missing


def test_every_variable_the_settings_read_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    missing = {name for name in _variables_read_by_settings() if f"`{name}`" not in readme}
    assert not missing
