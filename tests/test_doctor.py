"""`manage.py doctor` says in one line per remote what is wrong and how to fix it."""

import pytest
from django.core.management import CommandError, call_command

from tests.fixtures_stripe import STRIPE_TEST_KEY

pytestmark = pytest.mark.django_db


@pytest.fixture
def configured(settings, dolibarr_sandbox, dolibarr_api_key, stripe_sandbox, aipress24_sqlite):
    settings.AIPRESS24_DATABASE_URL = aipress24_sqlite.url
    settings.DOLIBARR_URL = dolibarr_sandbox.api_url
    settings.DOLIBARR_API_KEY = dolibarr_api_key
    settings.DOLIBARR_MAX_RETRIES = 0
    settings.STRIPE_API_BASE = stripe_sandbox.base_url
    settings.STRIPE_API_KEY = STRIPE_TEST_KEY
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    return settings


def _doctor(capsys):
    try:
        call_command("doctor")
        failed = None
    except CommandError as exc:
        failed = str(exc)
    return capsys.readouterr().out.splitlines(), failed


def _line(lines, name):
    (line,) = [line for line in lines if f" {name}: " in line]
    return line


def test_doctor_reports_all_good(configured, capsys):
    lines, failed = _doctor(capsys)
    assert failed is None
    assert all(line.startswith("ok") for line in lines)
    assert "Dolibarr 23.0.0" in _line(lines, "dolibarr")


def test_doctor_names_a_wrong_dolibarr_key(configured, capsys):
    configured.DOLIBARR_API_KEY = "not-the-key"
    lines, failed = _doctor(capsys)
    line = _line(lines, "dolibarr")
    assert line.startswith("FAIL dolibarr: Dolibarr refused the key")
    assert line.endswith("check DOLIBARR_API_KEY")
    assert "not-the-key" not in line
    assert failed == "1 check(s) failed"


def test_doctor_names_an_unreachable_dolibarr(configured, capsys, dolibarr_sandbox):
    dolibarr_sandbox.stop()
    lines, _ = _doctor(capsys)
    line = _line(lines, "dolibarr")
    assert line.startswith("FAIL dolibarr: Dolibarr is unreachable at ")
    assert "check DOLIBARR_URL and that the server is up" in line


def test_doctor_names_a_missing_stripe_key(configured, capsys):
    configured.STRIPE_API_KEY = ""
    lines, _ = _doctor(capsys)
    assert _line(lines, "stripe") == "FAIL stripe: STRIPE_API_KEY is not set; see .env.example"


def test_doctor_names_a_missing_dolibarr_url(configured, capsys):
    configured.DOLIBARR_URL = ""
    lines, _ = _doctor(capsys)
    assert _line(lines, "dolibarr") == "FAIL dolibarr: DOLIBARR_URL is not set; see .env.example"


def test_doctor_says_aipress24_is_readable_with_its_vat_rates(configured, capsys):
    lines, failed = _doctor(capsys)
    assert failed is None
    assert "Aipress24 readable (sqlite); VAT rates consultation 2.1 %" in _line(lines, "aipress24")


def test_doctor_names_a_missing_aipress24_database(configured, capsys):
    configured.AIPRESS24_DATABASE_URL = ""
    lines, failed = _doctor(capsys)
    assert failed is not None
    assert "AIPRESS24_DATABASE_URL is not set" in _line(lines, "aipress24")


def test_doctor_names_a_product_type_without_a_vat_rate(configured, capsys):
    configured.AIPRESS24_VAT_RATES = {"consultation": "2.1"}
    lines, failed = _doctor(capsys)
    assert failed is not None
    assert "AIPRESS24_VAT_RATES has no rate for product type" in _line(lines, "aipress24")
