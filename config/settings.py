"""Settings for Agent Console, read from the environment (see README: Configuration)."""

from __future__ import annotations

import contextlib
import os
import socket
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from agents.runtime.config import ConfigError
from agents.runtime.tools import TOOL_SETTINGS, ToolConfig
from config import broker
from config.env import (
    env_bool,
    env_decimal,
    env_float,
    env_int,
    env_list,
    env_secret,
    env_str,
)
from wire import turns
from wire.workspace import EXEC_OUTPUT_CEILING, EXEC_TIMEOUT_CEILING


def _memory_mib() -> int:
    """This machine's memory in MiB (the default sandbox capacity of a host)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 4096


BASE_DIR = Path(__file__).resolve().parent.parent
# The templates and static files, shipped in this package (and so in the wheel).
PACKAGE_DIR = Path(__file__).resolve().parent
VAR_DIR = Path(env_str("CONSOLE_VAR_DIR", str(BASE_DIR / "var")))
if not VAR_DIR.is_absolute():
    VAR_DIR = BASE_DIR / VAR_DIR
# Local state (the SQLite file, the broker folder, sandboxes) lives here, for every entry point.
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY")
_LOCAL_SECRET_KEY = VAR_DIR / "secret_key"  # written by `make run` for local use
if not SECRET_KEY and _LOCAL_SECRET_KEY.exists():
    SECRET_KEY = _LOCAL_SECRET_KEY.read_text().strip()
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) is required when DEBUG is off; "
            "`make run` generates one for local use."
        )
    SECRET_KEY = "insecure-debug-only-key"

PORT = env_int("PORT", 8000, minimum=1)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
# Origins (scheme://host[:port]) trusted for unsafe requests and the chat WebSocket, besides
# the one a page is served from and CONSOLE_BASE_URL's.
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# The address users and integrations reach the console at; agent URLs are built from it.
CONSOLE_BASE_URL = env_str("CONSOLE_BASE_URL", f"http://127.0.0.1:{PORT}").rstrip("/")
# The address agent runtimes reach the console's gateway at.
GATEWAY_URL = env_str("GATEWAY_URL", f"{CONSOLE_BASE_URL}/gateway").rstrip("/")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc, vendored: /api/docs/ needs no CDN
    "django_htmx",
    "channels",
    "console",
    "agents",
    "scaling",
    "gateway",
    "dashboard",
    "usage",
    "mcpserver",
    "operator_agent",
    "autopilot",
]

MIDDLEWARE = [
    "plumbing.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "plumbing.middleware.RequestMetricsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "plumbing.middleware.RateLimitHeadersMiddleware",
    "plumbing.middleware.DatabaseBusyMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"
AUTH_USER_MODEL = "console.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [PACKAGE_DIR / "templates"],
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

# --- Database: SQLite file by default, PostgreSQL (psycopg 3, pooled) with DATABASE_URL.
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    try:
        _db = dj_database_url.parse(DATABASE_URL)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is malformed: {exc}") from None
    if _db["ENGINE"] == "django.db.backends.postgresql":
        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN", 1, minimum=0),
            "max_size": env_int("DATABASE_POOL_MAX", 20, minimum=1),
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 10.0, minimum=0.1),
        }
else:
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "console.sqlite3",
        "OPTIONS": {
            # WAL lets web, worker and beat read while one of them writes.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
        "TEST": {"NAME": VAR_DIR / "test.sqlite3"},
        # Kept open for the life of the thread that opened it. Opening one (the file, the
        # PRAGMAs above, Django's SQL functions) costs ~1 ms, and the web process's one thread
        # for sync code (chat sockets, live turns) would otherwise pay it at every step of a
        # turn. An ASGI request's thread closes its connection as the request ends (asgi.py).
        "CONN_MAX_AGE": None,
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, cache and Celery broker when REDIS_URL is set.
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # An idle consumer blocks in BZPOPMIN for 5 s at a time; redis-py's own default
            # socket timeout is also 5 s, which would kill idle sockets' receive loops.
            # Every socket of a web process shares one inbox in Redis, and a message for a full
            # inbox is dropped: it must hold the chunks in flight to all of them (default 100).
            # redis-py fails a command past its pool's size (default 100), and every socket and
            # turn of the process sends through this pool.
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30, "max_connections": 1000}],
                "capacity": 10_000,
            },
        }
    }
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "plumbing.layers.SweptInMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery. Without REDIS_URL the broker is a private Redis server on a socket under VAR_DIR,
# which `make run` starts (config.broker).
CELERY_BROKER_DIR = broker.broker_dir(VAR_DIR)
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or broker.embedded_url(VAR_DIR))
# A task taken by a worker that was then killed goes back on its queue after this long, longer
# than any task's time limit (a boot's is 120 s), so that a running task is never handed out twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300, "unacked_restore_interval": 10}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_SERIALIZER = "json"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Beat keeps the schedule and a lock in Redis, the broker's when it is Redis (config/beat.py):
# of several beats, the one holding the lock sends. It renews the lock every loop and one that
# waits asks for it as often, so a second beat takes over within BEAT_LOCK_SECONDS (and a loop)
# of the first one's death. A beat stuck on Redis for as long has lost the lock anyway.
BEAT_LOCK_SECONDS = env_int("BEAT_LOCK_SECONDS", 25, minimum=2)
BEAT_REDIS_URL = broker.redis_url(CELERY_BROKER_URL) or REDIS_URL
CELERY_BEAT_SCHEDULER = "config.beat:OneBeatScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = BEAT_LOCK_SECONDS / 5
RECONCILE_INTERVAL_SECONDS = env_float("RECONCILE_INTERVAL_SECONDS", 60.0, minimum=1.0)

# --- Anthropic and the gateway.
ANTHROPIC_API_KEY = env_secret("ANTHROPIC_API_KEY")
ANTHROPIC_BASE_URL = env_str("ANTHROPIC_BASE_URL") or None
ANTHROPIC_TIMEOUT_SECONDS = env_float("ANTHROPIC_TIMEOUT_SECONDS", 600.0, minimum=1.0)
ANTHROPIC_MAX_RETRIES = env_int("ANTHROPIC_MAX_RETRIES", 2, minimum=0)
# The most a gateway call may wait for Anthropic's answer (a stream's first byte), retries included.
GATEWAY_DEADLINE_SECONDS = env_float(
    "GATEWAY_DEADLINE_SECONDS", ANTHROPIC_TIMEOUT_SECONDS, minimum=1.0
)
# How long a creating request's Idempotency-Key is remembered.
IDEMPOTENCY_KEY_HOURS = env_int("IDEMPOTENCY_KEY_HOURS", 24, minimum=1)
# How long a process keeps a model's price before reading the table again.
PRICE_CACHE_SECONDS = env_float("PRICE_CACHE_SECONDS", 60.0, minimum=0.0)
# Threads that run the gateway's database work, each keeping its connection open.
GATEWAY_DB_THREADS = env_int("GATEWAY_DB_THREADS", 4, minimum=1)
# Agents' MCP servers (README: Agents with MCP tools): empty, any public host; else only these
# hosts (names, addresses or *.domain), whatever addresses they resolve to.
AGENT_MCP_ALLOWED_HOSTS = env_list("AGENT_MCP_ALLOWED_HOSTS", [])
# How long an agent's MCP request may wait for its server's next bytes.
AGENT_MCP_TIMEOUT_SECONDS = env_float("AGENT_MCP_TIMEOUT_SECONDS", 300.0, minimum=1.0)
# A gateway call's worst case stays reserved at most this long when its process dies unsettled.
GATEWAY_RESERVATION_SECONDS = env_int(
    "GATEWAY_RESERVATION_SECONDS", 2 * int(ANTHROPIC_TIMEOUT_SECONDS) + 60, minimum=60
)
# The input tokens reserved for a call whose body cannot bound them (a file or URL source, a
# server tool such as web search, a very long tool list): set it to the largest context window
# callers use. 0: no cap, and such calls are refused under a USD or token budget.
GATEWAY_UNBOUNDED_INPUT_TOKENS = env_int("GATEWAY_UNBOUNDED_INPUT_TOKENS", 0, minimum=0)
# The web searches reserved for a web search tool without max_uses. 0: no cap, and such calls
# are refused under a USD budget.
GATEWAY_UNBOUNDED_SERVER_TOOL_USES = env_int("GATEWAY_UNBOUNDED_SERVER_TOOL_USES", 0, minimum=0)
DEFAULT_AGENT_MODEL = env_str("DEFAULT_AGENT_MODEL", turns.DEFAULT_MODEL)
# Encrypts users' own Anthropic keys at rest; comma-separated, newest first, for rotation.
FIELD_ENCRYPTION_KEYS = env_list("FIELD_ENCRYPTION_KEYS", [])
AGENT_TOKEN_TTL_SECONDS = env_int("AGENT_TOKEN_TTL_SECONDS", 24 * 3600, minimum=60)

# --- Operator agents.
# A call waiting for approval expires after this long; the run carries on without it.
OPERATOR_APPROVAL_MINUTES = env_int("OPERATOR_APPROVAL_MINUTES", 60, minimum=1)
# Model replies (and so tool-call rounds) in one run, and the tokens of each.
OPERATOR_MAX_STEPS = env_int("OPERATOR_MAX_STEPS", 20, minimum=1)
OPERATOR_MAX_TOKENS = env_int("OPERATOR_MAX_TOKENS", 4096, minimum=1)
OPERATOR_CALL_TIMEOUT_SECONDS = env_float("OPERATOR_CALL_TIMEOUT_SECONDS", 120.0, minimum=1.0)
# A run with no progress for this long lost its worker: beat ends it as failed.
OPERATOR_RUN_STALE_SECONDS = env_int("OPERATOR_RUN_STALE_SECONDS", 900, minimum=60)
# An agent's cost an hour, for the cost impact of a spawn, when the ledger has no agent-hours
# of its model in the last week.
OPERATOR_AGENT_HOUR_USD = env_decimal("OPERATOR_AGENT_HOUR_USD", Decimal("0.50"))

# --- Sandboxes.
SANDBOX_BACKEND = env_str("SANDBOX_BACKEND", "process")
if SANDBOX_BACKEND not in {"process", "qemu"}:
    raise ImproperlyConfigured(
        f"SANDBOX_BACKEND must be 'process' or 'qemu', not {SANDBOX_BACKEND!r}"
    )
SANDBOX_STATE_DIR = Path(env_str("SANDBOX_STATE_DIR", str(VAR_DIR / "sandboxes")))
# The qemu backend's guest image, built by `python -m vmdriver.guest.build --out <this>`
# (`make run` builds it when SANDBOX_BACKEND is qemu).
SANDBOX_GUEST_DIR = Path(env_str("SANDBOX_GUEST_DIR", str(VAR_DIR / "guest")))
# This worker's sandbox host: its name (and so its queue) and what it may run at once.
SANDBOX_HOST_NAME = env_str("SANDBOX_HOST_NAME", socket.gethostname())
SANDBOX_HOST_VCPUS = env_int("SANDBOX_HOST_VCPUS", 4 * (os.cpu_count() or 1), minimum=1)
SANDBOX_HOST_MEMORY_MIB = env_int("SANDBOX_HOST_MEMORY_MIB", _memory_mib(), minimum=64)
# Its GPUs: "auto" reads them from nvidia-smi (none where it is not installed), "none" gives
# it none, and a JSON list declares them (each: model, memory_mib, uuid, and pci_address for a
# microVM host, mig: [{profile, uuid}] for MIG slices), as vmdriver.gpus reads them.
SANDBOX_HOST_GPUS = env_str("SANDBOX_HOST_GPUS", "auto").strip()
if SANDBOX_HOST_GPUS not in {"auto", "none"} and not SANDBOX_HOST_GPUS.startswith("["):
    raise ImproperlyConfigured(
        f'SANDBOX_HOST_GPUS must be "auto", "none" or a JSON list, not {SANDBOX_HOST_GPUS!r}'
    )
# Each worker heartbeats its host; a host silent for the stale time is offline, its agents failed.
SANDBOX_HOST_HEARTBEAT_SECONDS = env_float("SANDBOX_HOST_HEARTBEAT_SECONDS", 10.0, minimum=0.1)
SANDBOX_HOST_STALE_SECONDS = env_float(
    "SANDBOX_HOST_STALE_SECONDS",
    3 * SANDBOX_HOST_HEARTBEAT_SECONDS,
    minimum=2 * SANDBOX_HOST_HEARTBEAT_SECONDS,  # one late heartbeat must not take a host offline
)
# Agents with no turn for this long are stopped by the idle reaper (0: never).
AGENT_IDLE_TIMEOUT_SECONDS = env_int("AGENT_IDLE_TIMEOUT_SECONDS", 3600, minimum=0)
# A microVM paused this long has its state saved to disk and its memory freed (0: never).
AGENT_PAUSE_SNAPSHOT_SECONDS = env_int("AGENT_PAUSE_SNAPSHOT_SECONDS", 600, minimum=0)
# Where bubblewrap cannot run, the process backend refuses to boot agents unless this is on.
SANDBOX_ALLOW_UNSANDBOXED = env_bool("SANDBOX_ALLOW_UNSANDBOXED", False)
SANDBOX_BOOT_TIMEOUT_SECONDS = env_float("SANDBOX_BOOT_TIMEOUT_SECONDS", 30.0, minimum=1.0)
# The agent relay (`manage.py sandbox_relay`) serves this host's agents to the other machines:
# where it listens, and the address they reach it at (unset: agents are dialled directly, as
# on one machine). Every request to a relay carries a token signed with the deployment's key.
SANDBOX_RELAY_LISTEN = env_str("SANDBOX_RELAY_LISTEN", "127.0.0.1:8090")
_relay_host, _, _relay_port = SANDBOX_RELAY_LISTEN.rpartition(":")
if not _relay_host or not _relay_port.isdigit():
    raise ImproperlyConfigured(
        f"SANDBOX_RELAY_LISTEN must be host:port, not {SANDBOX_RELAY_LISTEN!r}"
    )
SANDBOX_RELAY_URL = env_str("SANDBOX_RELAY_URL").rstrip("/")
_relay = urlsplit(SANDBOX_RELAY_URL)
if SANDBOX_RELAY_URL and (
    _relay.scheme not in {"http", "https"} or _relay.path or not _relay.hostname
):
    raise ImproperlyConfigured(
        f"SANDBOX_RELAY_URL must be http(s)://host:port without a path, not {SANDBOX_RELAY_URL!r}"
    )
SANDBOX_RELAY_KEY = env_secret("SANDBOX_RELAY_KEY")
if SANDBOX_RELAY_URL and len(SANDBOX_RELAY_KEY) < 32:
    raise ImproperlyConfigured(
        "SANDBOX_RELAY_KEY (or SANDBOX_RELAY_KEY_FILE) of at least 32 characters is required "
        "with SANDBOX_RELAY_URL"
    )
# How long a relay token lives: one request's, so tens of seconds.
SANDBOX_RELAY_TOKEN_SECONDS = env_int("SANDBOX_RELAY_TOKEN_SECONDS", 30, minimum=5)
AGENT_CHAT_TIMEOUT_SECONDS = env_float("AGENT_CHAT_TIMEOUT_SECONDS", 600.0, minimum=1.0)
# Where sessions' full turns are kept (agents.services.conversations): a dotted path to a class
# implementing ConversationStore.
CONVERSATION_STORE = env_str(
    "CONVERSATION_STORE", "agents.services.conversations.DjangoConversationStore"
)
# How long a chat turn waits for an agent that is still booting.
AGENT_BOOT_WAIT_SECONDS = env_float("AGENT_BOOT_WAIT_SECONDS", 30.0, minimum=0.0)
# The runtime's tool settings (README: Configuration), passed on to every sandbox this worker
# boots; checked here, so that a malformed one stops start-up instead of failing every boot.
AGENT_RUNTIME_ENV = {name: os.environ[name] for name in TOOL_SETTINGS if name in os.environ}
try:
    ToolConfig.from_env()
except ConfigError as exc:
    raise ImproperlyConfigured(str(exc)) from None
# A command an agent's owner runs in its sandbox (POST /api/v1/agents/<id>/exec): the longest it
# may run (a request may ask for less; 60 s when it names none), and the bytes of its standard
# output and of its standard error kept (the rest is counted, not kept). Within the runtime's own
# ceilings (wire/workspace.py).
AGENT_EXEC_TIMEOUT_SECONDS = env_float("AGENT_EXEC_TIMEOUT_SECONDS", 300.0, minimum=1.0)
AGENT_EXEC_OUTPUT_BYTES = env_int("AGENT_EXEC_OUTPUT_BYTES", 1024 * 1024, minimum=1024)
if AGENT_EXEC_TIMEOUT_SECONDS > EXEC_TIMEOUT_CEILING:
    raise ImproperlyConfigured(
        f"AGENT_EXEC_TIMEOUT_SECONDS must be at most {EXEC_TIMEOUT_CEILING:g}, "
        f"not {AGENT_EXEC_TIMEOUT_SECONDS:g}"
    )
if AGENT_EXEC_OUTPUT_BYTES > EXEC_OUTPUT_CEILING:
    raise ImproperlyConfigured(
        f"AGENT_EXEC_OUTPUT_BYTES must be at most {EXEC_OUTPUT_CEILING}, "
        f"not {AGENT_EXEC_OUTPUT_BYTES}"
    )
# The chat WebSocket: the largest frame a page may send, and how many frames a minute.
CHAT_WS_MAX_FRAME_BYTES = env_int("CHAT_WS_MAX_FRAME_BYTES", 256 * 1024, minimum=1024)
CHAT_WS_MESSAGES_PER_MINUTE = env_int("CHAT_WS_MESSAGES_PER_MINUTE", 120, minimum=1)
# A session's chat events kept for pages that reconnect: the last N, for this long after the last.
CHAT_REPLAY_EVENTS = env_int("CHAT_REPLAY_EVENTS", 5000, minimum=10)
CHAT_REPLAY_TTL_SECONDS = env_int("CHAT_REPLAY_TTL_SECONDS", 3600, minimum=10)
# A turn sent while another is being written in its session waits this long for it, at most.
CHAT_TURN_QUEUE_SECONDS = env_float("CHAT_TURN_QUEUE_SECONDS", 600.0, minimum=0.0)

# Anthropic accepts request bodies up to 32 MB (images, long documents); so does the gateway.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BYTES", 32 * 1024 * 1024, minimum=1024)

# --- Prometheus: /metrics may be protected by a bearer token.
METRICS_BEARER_TOKEN = env_secret("METRICS_BEARER_TOKEN")
# Per-user gateway metrics: each process labels the first N users it sees, the rest "(other)".
METRICS_USER_LABELS = env_int("METRICS_USER_LABELS", 50, minimum=0)
# Budget gauges are exported for this many budgets, those nearest their limits.
METRICS_BUDGETS = env_int("METRICS_BUDGETS", 20, minimum=0)
# Where Prometheus reads this machine's /metrics (every process of a machine writes to one
# multiprocess folder, so one URL reads them all): by default CONSOLE_BASE_URL's /metrics on a
# web or gateway machine, SANDBOX_RELAY_URL's on a sandbox host. Set it on each machine when
# several share CONSOLE_BASE_URL behind a load balancer, or Prometheus would reach one at random.
METRICS_URL = env_str("METRICS_URL").rstrip("/")
if METRICS_URL and urlsplit(METRICS_URL).scheme not in {"http", "https"}:
    raise ImproperlyConfigured(f"METRICS_URL must be an http(s) URL, not {METRICS_URL!r}")
# Each web, gateway and relay process says it is alive this often (0: never; it is then not
# discovered by Prometheus at /metrics/machines); one silent for PROCESS_STALE_SECONDS is gone.
PROCESS_HEARTBEAT_SECONDS = env_float("PROCESS_HEARTBEAT_SECONDS", 15.0, minimum=0.0)
PROCESS_STALE_SECONDS = env_float(
    "PROCESS_STALE_SECONDS", max(60.0, 3 * PROCESS_HEARTBEAT_SECONDS), minimum=1.0
)
# What /metrics reads from the database at scrape time, from the apps that own the data.
METRICS_COLLECTORS = ["agents.metrics.FleetCollector", "console.metrics.BudgetCollector"]
# /ready gives each check (database, broker, channel layer) this long to answer.
READY_TIMEOUT_SECONDS = env_float("READY_TIMEOUT_SECONDS", 2.0, minimum=0.1)
# The autoscaler reads each pool's load from this Prometheus server when set, else the database.
PROMETHEUS_URL = env_str("PROMETHEUS_URL").rstrip("/")
PROMETHEUS_TIMEOUT_SECONDS = env_float("PROMETHEUS_TIMEOUT_SECONDS", 5.0, minimum=0.1)

# --- DRF and OpenAPI.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "console.authentication.ApiKeyAuthentication",
        "console.authentication.JwtAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Scopes: an API key's bound what it may do; a session or a JWT has all its role allows.
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "console.api.permissions.HasScope",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["console.authentication.QuotaThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["plumbing.parsers.JSONParser"],  # bounded depth and size
    "EXCEPTION_HANDLER": "plumbing.errors.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# JWTs for integrations that sign in with a password: short-lived access, a day's refresh.
# Refresh tokens rotate; each sign-in is a TokenFamily row that a reused refresh token, a
# password change or a suspension ends (console.services.credentials).
JWT_ACCESS_MINUTES = env_int("JWT_ACCESS_MINUTES", 15, minimum=1)
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=JWT_ACCESS_MINUTES),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=1),
    "ROTATE_REFRESH_TOKENS": True,
    "ALGORITHM": "HS256",  # verified against this one only: "none" and other keys are refused
    "SIGNING_KEY": SECRET_KEY,
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": False,
}
# Password sign-ins (the API, the login page, the admin), counted exactly across processes:
# at most this many attempts per account and per client address in any window.
AUTHENTICATION_BACKENDS = ["console.authentication.ThrottledModelBackend"]
LOGIN_WINDOW_MINUTES = env_int("LOGIN_WINDOW_MINUTES", 15, minimum=1)
if LOGIN_WINDOW_MINUTES > 60:  # rate counters are kept for an hour
    raise ImproperlyConfigured(
        f"LOGIN_WINDOW_MINUTES must be at most 60, not {LOGIN_WINDOW_MINUTES}"
    )
LOGIN_ATTEMPTS_PER_ACCOUNT = env_int("LOGIN_ATTEMPTS_PER_ACCOUNT", 10, minimum=1)
LOGIN_ATTEMPTS_PER_ADDRESS = env_int("LOGIN_ATTEMPTS_PER_ADDRESS", 50, minimum=1)
# How many proxies (nginx) stand in front and append to X-Forwarded-For; 0: none, and the
# header, which any client can write, is ignored.
TRUSTED_PROXIES = env_int("TRUSTED_PROXIES", 0, minimum=0)
SPECTACULAR_SETTINGS = {
    "TITLE": "Agent Console API",
    "DESCRIPTION": "Spawn Claude agents in isolated sandboxes, chat with them, and count the cost.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Choice sets whose field names collide with others ("status").
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "agents.models.Agent.Status",
        "OperatorRunStatusEnum": "operator_agent.models.OperatorRun.Status",
        "OperatorActionStatusEnum": "operator_agent.models.OperatorAction.Status",
    },
    # Routes outside DRF (the chat and metrics views, the gateway app) and the error shape.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.openapi.postprocess_schema",
    ],
}

# --- Static files, served by WhiteNoise from config/static/ (everything vendored, no CDN).
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [PACKAGE_DIR / "static"]
# Straight from config/static/ without collectstatic: in development and in tests
# (`make run` collects).
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", DEBUG)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Production hardening: on unless DEBUG, each switchable for a proxy that terminates TLS.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if env_bool("USE_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Log lines: "plain" for a person at a terminal (make run's default), "json" (one object per line,
# request_id in each) for a log collector. The worker and beat log the same way in json.
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "wire.logs.RequestIdFilter"}},
    "formatters": {
        "plain": {"()": "wire.logs.PlainFormatter"},
        "json": {"()": "wire.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
