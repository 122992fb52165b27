"""Keel's one settings module: every value comes from the environment, read once and typed here.

Application code reads `django.conf.settings`, never `os.environ`. A malformed variable stops the
process at start-up with an error naming it (see config/env.py).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path

import dj_database_url
from cryptography.fernet import Fernet

from config.env import (
    EnvError,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_parsed,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("KEEL_VAR_DIR", str(BASE_DIR / "var")) or BASE_DIR / "var")

DEBUG = env_bool("DEBUG", False)

_secret = env_str("SECRET_KEY")
if _secret is None:
    if not DEBUG:
        raise EnvError("SECRET_KEY is required when DEBUG is off (set DEBUG=1 for local development)")
    # A fixed development key: sessions survive restarts of `make run`; never used with DEBUG off.
    _secret = "keel-insecure-development-key-do-not-use-in-production-0123456789"
SECRET_KEY: str = _secret

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# --- Database ------------------------------------------------------------------------------------
_default_db_url = f"sqlite:///{VAR_DIR / 'keel.sqlite3'}"
DATABASES = {
    "default": env_parsed(
        "DATABASE_URL",
        lambda url: dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True),
        dj_database_url.parse(_default_db_url),
        "database URL (postgres://user@host:port/name or sqlite:///path)",
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while the embedded queue writes; the timeout rides out writers.
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Server-side binding: values travel apart from the SQL text (no quoting and splicing of every
    # value in Python), and psycopg prepares a statement the connection runs repeatedly, so
    # PostgreSQL skips parsing and planning it. Both cost CPU on every statement of every run.
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault("server_side_binding", True)
    # Django turns psycopg's prepared statements off (for transaction-mode poolers such as
    # PgBouncer's); Keel connects directly, and a run's statements are the same every time:
    # prepared after 5 uses on a connection, they are not parsed and planned again (measured:
    # PostgreSQL's CPU per sync run 6.5 -> 3.3 ms). Behind a transaction-mode pooler set
    # KEEL_DB_PREPARED_STATEMENTS=0.
    DATABASES["default"]["OPTIONS"].setdefault(
        "prepare_threshold", 5 if env_bool("KEEL_DB_PREPARED_STATEMENTS", True) else None
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, queues, throttles, breaker state ---------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL is not None and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise EnvError(f"REDIS_URL={REDIS_URL!r} must start with redis://, rediss:// or unix://")

if REDIS_URL:
    _cache_options: dict[str, object] = {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 5}
    _cache_location = REDIS_URL
else:
    # Embedded default: an in-process fake Redis, so `make run` needs no server. One process only.
    import fakeredis

    _cache_options = {"CONNECTION_POOL_KWARGS": {"connection_class": fakeredis.FakeConnection}}
    _cache_location = "redis://embedded/0"

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": _cache_location,
        "KEY_PREFIX": "keel",
        "OPTIONS": _cache_options,
    }
}

# Jobs run inline when there is no real Redis (no worker could share the fake one).
RQ_ASYNC = REDIS_URL is not None
RQ_QUEUE_NAMES = ("runs", "default", "ingest", "notifications")
RQ_QUEUES = {name: {"USE_REDIS_CACHE": "default", "ASYNC": RQ_ASYNC, "DEFAULT_TIMEOUT": 900} for name in RQ_QUEUE_NAMES}
RQ_SHOW_ADMIN_LINK = True

# --- Applications ----------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_rq",
    "django_structlog",
    "django_htmx",
    "apps.core",
    "apps.accounts",
    "apps.providers",
    "apps.usage",
    "apps.workflows",
    "apps.runs",
]

MIDDLEWARE = [
    "apps.core.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "apps.core.middleware.RequestSizeLimitMiddleware",
    "django_structlog.middlewares.RequestMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "/admin/login/"

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

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
MEDIA_ROOT = VAR_DIR / "media"
# var/ is Keel's own working directory; make its parts exist rather than warn about them.
for _dir in (VAR_DIR, STATIC_ROOT):
    _dir.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = DEBUG

# --- Request limits --------------------------------------------------------------------------------
KEEL_MAX_REQUEST_BYTES = env_int("KEEL_MAX_REQUEST_BYTES", 10 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = KEEL_MAX_REQUEST_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = min(KEEL_MAX_REQUEST_BYTES, 2_621_440)


def _parse_rate(value: str) -> str:
    count, _, period = value.partition("/")
    if not count.isdigit() or int(count) < 1 or period not in {"s", "sec", "min", "m", "hour", "h", "day", "d"}:
        raise ValueError("expected N/s, N/min, N/hour or N/day")
    return value


KEEL_API_THROTTLE_RATE = env_parsed("KEEL_API_THROTTLE_RATE", _parse_rate, "1200/min", "rate")

# --- Secrets at rest -------------------------------------------------------------------------------


def _parse_fernet_keys(value: str) -> list[str]:
    keys = [k.strip() for k in value.split(",") if k.strip()]
    if not keys:
        raise ValueError("no key given")
    for key in keys:
        Fernet(key.encode())  # raises on a malformed key
    return keys


_dev_fernet = base64.urlsafe_b64encode(hashlib.sha256(SECRET_KEY.encode()).digest()).decode()
KEEL_ENCRYPTION_KEYS: list[str] = env_parsed(
    "KEEL_ENCRYPTION_KEYS", _parse_fernet_keys, [_dev_fernet] if DEBUG else [], "comma-separated list of Fernet keys"
)
if not KEEL_ENCRYPTION_KEYS:
    raise EnvError("KEEL_ENCRYPTION_KEYS is required when DEBUG is off (Fernet.generate_key())")

# --- REST API --------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # API keys first: an unauthenticated request then gets 401 with `WWW-Authenticate: Bearer`.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["apps.accounts.tenancy.IsWorkspaceMember"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "apps.core.pagination.CursorPagination",
    "DEFAULT_THROTTLE_CLASSES": ["apps.core.throttling.PrincipalRateThrottle"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.core.problems.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DATETIME_FORMAT": "iso-8601",
    "COERCE_DECIMAL_TO_STRING": True,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Keel API",
    "DESCRIPTION": "Workflows, runs, usage and budgets. Errors are application/problem+json (RFC 9457).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    # Serve Swagger UI's assets ourselves: a self-hosted install may have no route to a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Security (production: DEBUG=0, KEEL_HTTPS=1) ----------------------------------------------------
KEEL_HTTPS = env_bool("KEEL_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = KEEL_HTTPS
SESSION_COOKIE_SECURE = KEEL_HTTPS
CSRF_COOKIE_SECURE = KEEL_HTTPS
SECURE_HSTS_SECONDS = env_int("KEEL_HSTS_SECONDS", 31_536_000 if KEEL_HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = KEEL_HTTPS
SECURE_HSTS_PRELOAD = env_bool("KEEL_HSTS_PRELOAD", KEEL_HTTPS)
# Load balancers probe over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
if env_bool("KEEL_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

# --- Logging ---------------------------------------------------------------------------------------
LOG_FORMAT = env_choice("LOG_FORMAT", ("json", "console"), "console" if DEBUG else "json")
LOG_LEVEL = env_choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO")
DJANGO_STRUCTLOG_CELERY_ENABLED = False
# RequestIdMiddleware has already validated (or replaced) the incoming X-Request-ID.
DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID = True
# request_finished carries everything request_started does plus the outcome; one line per request at INFO.
DJANGO_STRUCTLOG_STATUS_START_LOG_LEVEL = logging.DEBUG

from apps.core.logging import build_logging_config, configure_structlog  # noqa: E402

LOGGING = build_logging_config(fmt=LOG_FORMAT, level=LOG_LEVEL)
configure_structlog(fmt=LOG_FORMAT)

# --- Error reporting -------------------------------------------------------------------------------
SENTRY_DSN = env_str("SENTRY_DSN")
SENTRY_TRACES_SAMPLE_RATE = env_float("SENTRY_TRACES_SAMPLE_RATE", 0.0, minimum=0.0)
if SENTRY_DSN:
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.rq import RqIntegration

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        integrations=[DjangoIntegration(), RqIntegration()],
        traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE,
        send_default_pii=False,
        environment=env_str("SENTRY_ENVIRONMENT", "production"),
    )

# --- Usage and budgets (apps/usage) ------------------------------------------------------------------
# A budget hold older than this was left by a dead worker: budget_release_stale releases it. Keep it
# above the longest a single provider call attempt may take (a step's timeout_s goes up to 3600 s):
# a live call whose hold is swept still books its cost, but the limit no longer holds room for it.
KEEL_BUDGET_RESERVATION_TTL_S = env_int("KEEL_BUDGET_RESERVATION_TTL_S", 7200, minimum=60)
# Workers serving the runs queue enqueue the stale-hold sweep this often (apps/core/jobs.py periodic jobs).
KEEL_BUDGET_SWEEP_INTERVAL_S = env_float("KEEL_BUDGET_SWEEP_INTERVAL_S", 300.0, minimum=1.0)

# --- providers (apps/providers: gateway retries, circuit breaker) ------------------------------------
# Backoff before retry k: uniform(e/2, e), e = min(MAX, BASE * 2**(k-1)), never shorter than Retry-After.
KEEL_GATEWAY_BACKOFF_BASE_S = env_float("KEEL_GATEWAY_BACKOFF_BASE_S", 0.5, minimum=0.0)
KEEL_GATEWAY_BACKOFF_MAX_S = env_float("KEEL_GATEWAY_BACKOFF_MAX_S", 8.0, minimum=0.0)
# A provider asking to wait longer than this is given up on at once (the next model in the chain answers).
KEEL_GATEWAY_RETRY_AFTER_MAX_S = env_float("KEEL_GATEWAY_RETRY_AFTER_MAX_S", 30.0, minimum=0.0)
KEEL_BREAKER_FAILURE_THRESHOLD = env_int("KEEL_BREAKER_FAILURE_THRESHOLD", 5, minimum=1)
KEEL_BREAKER_COOLDOWN_S = env_float("KEEL_BREAKER_COOLDOWN_S", 30.0, minimum=0.1)
# How long a half-open probe holds its slot if its process dies before reporting back.
KEEL_BREAKER_PROBE_TTL_S = env_float("KEEL_BREAKER_PROBE_TTL_S", 60.0, minimum=1.0)
# The SDK's HTTP client logs every request at INFO; the gateway's `provider_call` line already says
# more about each attempt, and a second line per call costs CPU on the hot path (warnings still show).
LOGGING["loggers"]["httpx2"] = {"handlers": ["console"], "level": "WARNING", "propagate": False}

# --- workflows and runs (apps/workflows, apps/runs) -------------------------------------------------
# Every RQ worker is a KeelWorker: it rebinds each job's log context and enqueues the periodic jobs
# (the run reaper) itself, so no separate scheduler process is needed for them (docs/runs.md).
RQ = {"JOB_CLASS": "apps.core.jobs.KeelJob", "WORKER_CLASS": "apps.core.jobs.KeelWorker"}
# A running run writes a heartbeat this often; one silent for KEEL_RUN_STALE_S is taken over by the
# reaper, which runs every KEEL_REAPER_INTERVAL_S. A crashed run resumes within STALE + INTERVAL.
KEEL_RUN_HEARTBEAT_S = env_float("KEEL_RUN_HEARTBEAT_S", 5.0, minimum=0.2)
KEEL_RUN_STALE_S = env_float("KEEL_RUN_STALE_S", 30.0, minimum=1.0)
KEEL_REAPER_INTERVAL_S = env_float("KEEL_REAPER_INTERVAL_S", 10.0, minimum=0.5)
if KEEL_RUN_STALE_S < 2 * KEEL_RUN_HEARTBEAT_S:
    raise EnvError("KEEL_RUN_STALE_S must be at least twice KEEL_RUN_HEARTBEAT_S (a live run would look dead)")
# A run whose executor died this many times is failed (worker_lost) instead of resumed again.
KEEL_RUN_MAX_EXECUTIONS = env_int("KEEL_RUN_MAX_EXECUTIONS", 3, minimum=1)
# Used when a definition sets no limits.timeout_s.
KEEL_RUN_DEFAULT_TIMEOUT_S = env_float("KEEL_RUN_DEFAULT_TIMEOUT_S", 600.0, minimum=1.0)
# mode=sync waits this long by default (a request may ask for up to KEEL_RUN_MAX_WAIT_S) before 202.
KEEL_RUN_DEFAULT_WAIT_S = env_float("KEEL_RUN_DEFAULT_WAIT_S", 30.0, minimum=0.0)
KEEL_RUN_MAX_WAIT_S = env_float("KEEL_RUN_MAX_WAIT_S", 300.0, minimum=0.0)
KEEL_IDEMPOTENCY_TTL_S = env_int("KEEL_IDEMPOTENCY_TTL_S", 86400, minimum=60)
# An SSE connection ends after this long (clients reconnect with Last-Event-ID).
KEEL_SSE_MAX_S = env_float("KEEL_SSE_MAX_S", 3600.0, minimum=1.0)
# Runs and steps both have a `status` with different choices: name their OpenAPI enums explicitly.
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    **SPECTACULAR_SETTINGS.get("ENUM_NAME_OVERRIDES", {}),  # type: ignore[dict-item]
    "RunStatusEnum": "apps.runs.models.Run.Status",
    "StepRunStatusEnum": "apps.runs.models.StepRun.Status",
}

# --- run engine performance (issue #6: apps/runs, apps/core/jobs.py) --------------------------------
# RQ workers execute jobs in their own process (KeelWorker, no fork per job: docs/runs.md). Set
# KEEL_WORKER_FORK=1 for RQ's work horse per job instead (KeelForkWorker).
KEEL_WORKER_FORK = env_bool("KEEL_WORKER_FORK", False)
if KEEL_WORKER_FORK:
    RQ["WORKER_CLASS"] = "apps.core.jobs.KeelForkWorker"

# --- Database connections: a bounded pool per process (docs/operations.md) --------------------------
# With a connection per thread, a gthread web process held two per in-flight sync or stream run (its
# request thread's and its run thread's) and so grew with load until PostgreSQL refused new clients
# (max_connections): requests and runs failed with 500s. On PostgreSQL every thread of a process
# borrows from one psycopg pool of at most KEEL_DB_POOL_MAX_SIZE connections instead, and threads
# give theirs back while they wait (apps/core/db.py). A thread waits up to KEEL_DB_POOL_TIMEOUT_S
# for one; a request that still gets none is answered 503 with Retry-After (apps/core/problems.py).
# KEEL_DB_POOL_MAX_SIZE=0 turns the pool off (a connection per thread, CONN_MAX_AGE 60 s).
KEEL_DB_POOL_MAX_SIZE = env_int("KEEL_DB_POOL_MAX_SIZE", 20, minimum=0)
KEEL_DB_POOL_TIMEOUT_S = env_float("KEEL_DB_POOL_TIMEOUT_S", 10.0, minimum=0.1)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and KEEL_DB_POOL_MAX_SIZE > 0:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django requires it with a pool: the pool keeps them open
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 0,  # opened on demand: a worker or management command needs one or two
        "max_size": KEEL_DB_POOL_MAX_SIZE,
        "timeout": KEEL_DB_POOL_TIMEOUT_S,
        "max_idle": 300,  # an idle connection above the load's need is closed after this long
        "name": "keel",
    }
    # psycopg_pool logs every checkout and return at INFO.
    LOGGING["loggers"]["psycopg.pool"] = {"handlers": ["console"], "level": "WARNING", "propagate": False}
