"""Settings for ap24sync, read from the environment (django-environ).

With no variable set the project runs on the embedded default: a SQLite file database, the
django-q2 ORM broker and development mode. Every variable is listed, with its meaning, in
`.env.example` and in the README's configuration table.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


class _Env(environ.Env):
    """An empty variable counts as unset, so that a copy of .env.example works as it is."""

    def get_value(self, var, cast=None, default=environ.Env.NOTSET, parse_default=False):
        if self.ENVIRON.get(var) == "" and default is not environ.Env.NOTSET:
            return default
        return super().get_value(var, cast=cast, default=default, parse_default=parse_default)


env = _Env()
_env_file = env.str("AP24SYNC_ENV_FILE", default=str(BASE_DIR / ".env"))
if Path(_env_file).is_file():
    environ.Env.read_env(_env_file, overwrite=False)

# --- Mode -----------------------------------------------------------------------------------
AP24SYNC_MODE = env.str("AP24SYNC_MODE", default="development")
if AP24SYNC_MODE not in {"development", "production"}:
    raise ImproperlyConfigured(
        f"AP24SYNC_MODE must be 'development' or 'production', not {AP24SYNC_MODE!r}; "
        "see .env.example"
    )
PRODUCTION = AP24SYNC_MODE == "production"

if PRODUCTION:
    if not env.str("SECRET_KEY", default=""):
        raise ImproperlyConfigured("SECRET_KEY is not set; see .env.example")
    SECRET_KEY = env.str("SECRET_KEY")
else:
    # Development only: production refuses to start without its own key (above).
    SECRET_KEY = env.str(
        "SECRET_KEY", default="development-only-not-secret-5d8e0c2b7a9f4e61b3c1d0a8f7e6d5c4b3a2"
    )

DEBUG = env.bool("DEBUG", default=not PRODUCTION)
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=[] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]"]
)
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS is not set; see .env.example")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- Applications ---------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "django_tables2",
    "django_filters",
    "reconciliation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "ap24sync.urls"
WSGI_APPLICATION = "ap24sync.wsgi.application"
ASGI_APPLICATION = "ap24sync.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and IMMEDIATE transactions let the web server and one django-q2 worker share the
    # file without "database is locked" errors.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Background jobs (django-q2) ------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
Q_CLUSTER = {
    "name": env.str("Q_CLUSTER_NAME", default="ap24sync"),
    "workers": env.int("Q_WORKERS", default=1 if not REDIS_URL else 2),
    # Longer than the longest job (a full rescan of a large backlog); `retry` must exceed it.
    "timeout": env.int("Q_TIMEOUT", default=3600),
    "retry": env.int("Q_RETRY", default=3720),
    "max_attempts": 1,
    "catch_up": False,
    "save_limit": 1000,
    "label": "Background jobs",
    # Daily schedules ("daily 02:30") are UTC, not Europe/Paris wall time that moves with DST.
    "time_zone": "UTC",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Outside systems (read when a connector is built, never at import) ----------------------
DOLIBARR_URL = env.str("DOLIBARR_URL", default="")
DOLIBARR_API_KEY = env.str("DOLIBARR_API_KEY", default="")
DOLIBARR_CONNECT_TIMEOUT = env.float("DOLIBARR_CONNECT_TIMEOUT", default=3.05)
DOLIBARR_READ_TIMEOUT = env.float("DOLIBARR_READ_TIMEOUT", default=30.0)
DOLIBARR_MAX_RETRIES = env.int("DOLIBARR_MAX_RETRIES", default=5)  # backoff 1, 2, 4, 8, 16 s
DOLIBARR_UI_URL = env.str("DOLIBARR_UI_URL", default="")
# Bank accounts by their Dolibarr ref (resolved to ids at run time, never hard-coded ids).
DOLIBARR_STRIPE_BANK_ACCOUNT = env.str("DOLIBARR_STRIPE_BANK_ACCOUNT", default="STRIPE")
DOLIBARR_PAYOUT_BANK_ACCOUNT = env.str("DOLIBARR_PAYOUT_BANK_ACCOUNT", default="")
DOLIBARR_MULTICURRENCY = env.bool("DOLIBARR_MULTICURRENCY", default=False)
# With the multicurrency module: the Dolibarr bank account (by ref) standing for each Stripe
# balance in another currency, and where its payouts land: "GBP=STRIPE-GBP,USD=STRIPE-USD".
DOLIBARR_STRIPE_BANK_ACCOUNTS = env.dict("DOLIBARR_STRIPE_BANK_ACCOUNTS", default={})
DOLIBARR_PAYOUT_BANK_ACCOUNTS = env.dict("DOLIBARR_PAYOUT_BANK_ACCOUNTS", default={})
# Seconds a worker waits for the numbered-write lane before giving up (transient).
DOLIBARR_LANE_TIMEOUT = env.int("DOLIBARR_LANE_TIMEOUT", default=300)

# --- Sync engine ----------------------------------------------------------------------------
SYNC_WORKERS = env.int("SYNC_WORKERS", default=4)
SYNC_MAX_ATTEMPTS = env.int("SYNC_MAX_ATTEMPTS", default=8)
SYNC_LEASE_MINUTES = env.int("SYNC_LEASE_MINUTES", default=15)

# The scheduled reconciliation looks at what changed in this many days (the daily full one at
# everything).
RECONCILE_WINDOW_DAYS = env.int("RECONCILE_WINDOW_DAYS", default=35)

# --- Jobs, circuit breakers, alerts ---------------------------------------------------------
# A job's lease: a crashed holder's expires after this many seconds (holders renew it while
# they run), so that the next run proceeds.
JOB_LEASE_SECONDS = env.int("JOB_LEASE_SECONDS", default=900)
# Cadence overrides, job=cadence: "every 5m", "every 2h", "daily 02:30" (server time, UTC).
JOB_CADENCES = env.dict("JOB_CADENCES", default={})
# A remote's breaker opens after this many consecutive failures, and lets one probe through
# after the cool-down.
BREAKER_FAILURES = env.int("BREAKER_FAILURES", default=5)
BREAKER_COOL_DOWN_SECONDS = env.int("BREAKER_COOL_DOWN_SECONDS", default=60)
# The admins are e-mailed when a breaker stays open longer than this.
ALERT_BREAKER_OPEN_MINUTES = env.int("ALERT_BREAKER_OPEN_MINUTES", default=15)

STRIPE_API_KEY = env.str("STRIPE_API_KEY", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_MAX_NETWORK_RETRIES = env.int("STRIPE_MAX_NETWORK_RETRIES", default=5)
STRIPE_WEBHOOK_MAX_BYTES = env.int("STRIPE_WEBHOOK_MAX_BYTES", default=262144)

# Aipress24's event push (docs/aipress24-push.md): the shared HMAC secret, how far the signed
# timestamp may be from now either way, the largest body accepted.
AIPRESS24_PUSH_SECRET = env.str("AIPRESS24_PUSH_SECRET", default="")
AIPRESS24_PUSH_TOLERANCE_SECONDS = env.int("AIPRESS24_PUSH_TOLERANCE_SECONDS", default=300)
AIPRESS24_PUSH_MAX_BYTES = env.int("AIPRESS24_PUSH_MAX_BYTES", default=65536)

# Aipress24's database, read-only (docs/aipress24.md): postgres://reader:…@host:5432/aipress24,
# or sqlite:////path/to/file.sqlite3 for the SQLite equivalent of the synthetic data.
AIPRESS24_DATABASE_URL = env.str("AIPRESS24_DATABASE_URL", default="")

# VAT rate (percent) of each Aipress24 product type on the orders and invoices of one-off
# purchases (docs/aipress24-sync.md): "consultation=2.1,consultation_gift=2.1,...". Set them with
# your accountant; an invoice whose total differs from what Stripe collected stays a draft.
AIPRESS24_VAT_RATES = env.dict(
    "AIPRESS24_VAT_RATES",
    default={
        "consultation": "2.1",
        "consultation_gift": "2.1",
        "justificatif": "20",
        "cession": "20",
    },
)
# Business Wall types whose organisations are Aipress24's partners (the free media types):
# their thirdparties carry the prospect flag as well (docs/aipress24-sync.md).
AIPRESS24_PARTNER_WALL_TYPES = env.list(
    "AIPRESS24_PARTNER_WALL_TYPES",
    default=["media", "news_agency", "micro", "corporate_media", "union", "academics"],
)


def _url_password(url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:
        return ""
    return unquote(password) if password else ""


# Not a variable of its own: the password inside AIPRESS24_DATABASE_URL, so that it is redacted
# from logs on its own too, not only as part of the whole URL.
AIPRESS24_DATABASE_PASSWORD = _url_password(AIPRESS24_DATABASE_URL)

# Values that must never appear in logs, pages or audit payloads (see reconciliation.logs).
SECRET_SETTING_NAMES = (
    "SECRET_KEY",
    "DOLIBARR_API_KEY",
    "STRIPE_API_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "AIPRESS24_DATABASE_URL",
    "AIPRESS24_DATABASE_PASSWORD",
    "AIPRESS24_PUSH_SECRET",
)

# --- Auth, i18n, static ---------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("fr", "Français")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env.str("TIME_ZONE", default="Europe/Paris")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))

# --- Mail and admins ------------------------------------------------------------------------
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
ADMINS = [tuple(pair.split(":", 1)) for pair in env.list("ADMINS", default=[]) if ":" in pair]
SERVER_EMAIL = env.str("SERVER_EMAIL", default="ap24sync@localhost")
EMAIL_SUBJECT_PREFIX = "[ap24sync] "
DEFAULT_FROM_EMAIL = SERVER_EMAIL

# --- Security (production) ------------------------------------------------------------------
if PRODUCTION:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz/?$"]  # the load balancer probes /healthz over plain HTTP
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_JSON = env.bool("LOG_JSON", default=False)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "reconciliation.logs.RedactSecretsFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "reconciliation.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_JSON else "plain",
            "filters": ["redact_secrets"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "urllib3": {"level": "WARNING"},
        "stripe": {"level": "WARNING"},
    },
}
