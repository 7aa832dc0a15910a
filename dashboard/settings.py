"""Gantry settings. Everything configurable comes from the environment, read here and only here.

Defaults run on a laptop with nothing installed (SQLite, Celery's filesystem broker, a local Ray
head); production points the same names at PostgreSQL, Redis, a Ray cluster and an MLflow server.
"""
from __future__ import annotations

import base64
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from celery.schedules import schedule
from kombu import Queue

from dashboard.env import (
    ConfigError,
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_secret,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("GANTRY_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

GANTRY_ENV = env_choice("GANTRY_ENV", "dev", ("dev", "prod"))
PRODUCTION = GANTRY_ENV == "prod"
DEBUG = env_bool("DEBUG", not PRODUCTION)


def _secret_key() -> str:
    key = env_secret("SECRET_KEY")
    if key:
        return key
    if PRODUCTION:
        raise ConfigError(
            "SECRET_KEY is not set and GANTRY_ENV=prod. Set SECRET_KEY (or SECRET_KEY_FILE) to a long "
            "random string, e.g. the output of: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    # Dev: one random key per checkout, kept in var/ so sessions survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ConfigError("ALLOWED_HOSTS is empty and GANTRY_ENV=prod. Set it to the host names the dashboard is served as.")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "dashboard",
    "serving",
    "gates",
    "health",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "dashboard.auth.BearerTokenMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a login refused for too many failures into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"

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
                "dashboard.context_processors.gantry",
            ],
        },
    },
]


def _database() -> dict:
    url = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'gantry.sqlite3'}")
    try:
        # Health checks: a kept connection the database dropped (a restart) is replaced before the
        # next request uses it, instead of failing that request.
        config = dj_database_url.parse(url, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0), conn_health_checks=True)
    except (ValueError, KeyError) as exc:
        raise ConfigError(
            f"DATABASE_URL={url!r} is not a database URL Gantry understands ({exc}). "
            "Use e.g. postgres://user:password@host:5432/gantry or sqlite:////absolute/path.sqlite3."
        ) from None
    if not config.get("ENGINE"):
        raise ConfigError(f"DATABASE_URL={url!r} names no database engine.")
    if config["ENGINE"].endswith("sqlite3"):
        # A web process, a worker and beat share the file: wait for the lock instead of failing.
        config.setdefault("OPTIONS", {}).update({"timeout": 20, "transaction_mode": "IMMEDIATE"})
        # Tests on SQLite use a file beside it, not Django's in-memory default: threads and
        # processes then share it (and its locking) exactly as Gantry's own processes do.
        if config.get("NAME") and config["NAME"] != ":memory:":
            name = Path(config["NAME"])
            config["TEST"] = {"NAME": str(name.with_name(f"test_{name.name}"))}
    else:
        config.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    return config


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Production sits behind a TLS-terminating proxy unless GANTRY_HTTPS=0 says it does not.
HTTPS = PRODUCTION and env_bool("GANTRY_HTTPS", True)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if HTTPS else 0, minimum=0)
# The dashboard's own host name and any below it: a control plane has no plain-HTTP subdomains.
# "preload" is inert until someone submits the registrable domain to the browsers' list.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", HTTPS)
# The load balancer's probes come over plain HTTP from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

# Login rate limit (django-axes): this many failed logins for one username from one address lock
# that pair out for the cool-off. The address is the TCP peer's (dashboard/login.py says why).
GANTRY_LOGIN_FAILURE_LIMIT = env_int("GANTRY_LOGIN_FAILURE_LIMIT", 5, minimum=1)
GANTRY_LOGIN_COOLOFF_MINUTES = env_int("GANTRY_LOGIN_COOLOFF_MINUTES", 15, minimum=1)
AUTHENTICATION_BACKENDS = ["dashboard.login.RateLimitedBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = GANTRY_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=GANTRY_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "dashboard.login.client_address"
AXES_LOCKOUT_CALLABLE = "dashboard.login.locked_out"

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery ---------------------------------------------------------------------------------
# Default broker: Celery's filesystem transport under var/, which needs no server. Redis (or any
# kombu URL) when CELERY_BROKER_URL is set.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "celery-broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        # Broadcast (worker control) state; kombu's default is ./control in whatever the cwd is.
        "control_folder": str(_broker_dir / "control"),
        # kombu polls the folder once a second by default: a change would wait up to that long.
        "polling_interval": 0.1,
    }
    # kombu's own filesystem channel lets a reader see a half-written message (dashboard/broker.py).
    CELERY_BROKER_TRANSPORT = "dashboard.broker:Transport"
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 3, "socket_timeout": 10}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Ray's driver (the reconciler connects one) needs the real stdout/stderr file descriptors; Celery's
# default LoggingProxy has none, and ray.init fails with "no attribute 'fileno'".
CELERY_WORKER_REDIRECT_STDOUTS = False
CELERY_TASK_DEFAULT_QUEUE = "serve"
CELERY_TASK_QUEUES = [Queue("serve"), Queue("gates"), Queue("health")]
CELERY_TASK_ROUTES = {
    "serving.tasks.*": {"queue": "serve"},
    "gates.tasks.*": {"queue": "gates"},
    "health.tasks.*": {"queue": "health"},
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Serving, gates, health -------------------------------------------------------------------
RAY_ADDRESS = env_str("RAY_ADDRESS", "127.0.0.1:6380")
RAY_DASHBOARD_URL = env_str("RAY_DASHBOARD_URL", "http://127.0.0.1:8265")
GANTRY_SERVE_HOST = env_str("GANTRY_SERVE_HOST", "127.0.0.1")
GANTRY_SERVE_PORT = env_int("GANTRY_SERVE_PORT", 8000, minimum=1)
MLFLOW_TRACKING_URI = env_str("MLFLOW_TRACKING_URI", f"sqlite:///{VAR_DIR / 'mlflow.db'}")
# Experiments Gantry creates on a local (sqlite) backend keep their artifacts here: MLflow's own
# default, ./mlruns, is relative to whatever directory the process started in.
MLFLOW_ARTIFACT_ROOT = env_str("MLFLOW_ARTIFACT_ROOT", str(VAR_DIR / "mlartifacts"))
# Every MLflow HTTP request is bounded by these: MLflow's defaults (120 s, 7 retries with backoff)
# make an unreachable server minutes of silence in a gate step or a web request.
GANTRY_MLFLOW_TIMEOUT_S = env_int("GANTRY_MLFLOW_TIMEOUT_S", 3, minimum=1)
GANTRY_MLFLOW_RETRIES = env_int("GANTRY_MLFLOW_RETRIES", 1, minimum=0)
GANTRY_MLFLOW_READY_TIMEOUT_S = env_int("GANTRY_MLFLOW_READY_TIMEOUT_S", 120, minimum=1)
# Versions that specs name as models:/<name>@<alias> are downloaded here once and served from here;
# on a cluster of several nodes it must be mounted at the same path on every Ray node.
GANTRY_REGISTRY_DIR = Path(env_str("GANTRY_REGISTRY_DIR", str(VAR_DIR / "registry"))).resolve()
GANTRY_HF_ROOT = Path(env_str("GANTRY_HF_ROOT", str(VAR_DIR / "hf"))).resolve()
GANTRY_DATASETS_ROOT = Path(env_str("GANTRY_DATASETS_ROOT", str(VAR_DIR / "datasets"))).resolve()
GANTRY_USERS_ROOT = Path(env_str("GANTRY_USERS_ROOT", str(VAR_DIR / "users"))).resolve()
GANTRY_ENGINE = env_choice("GANTRY_ENGINE", "auto", ("auto", "cpu", "gpu"))
GANTRY_ACCELERATOR_TYPE = env_str("GANTRY_ACCELERATOR_TYPE", "")
GANTRY_SERVE_CLIENT = env_str("GANTRY_SERVE_CLIENT", "serving.cluster.RayServeClient")
# A deploy that is not RUNNING this long after its apply fails with Serve's last message; one that
# waits for GPUs this long fails too. Large models on slow disks need the generous default.
GANTRY_DEPLOY_TIMEOUT_S = env_int("GANTRY_DEPLOY_TIMEOUT_S", 900, minimum=1)
GANTRY_PENDING_TIMEOUT_S = env_int("GANTRY_PENDING_TIMEOUT_S", 1800, minimum=1)
GANTRY_RECONCILE_INTERVAL_S = env_int("GANTRY_RECONCILE_INTERVAL_S", 10, minimum=1)
# While a model is DEPLOYING or DELETING the reconciler looks again this soon, instead of waiting
# for beat: Gantry says RUNNING within about this long of Serve.
GANTRY_RECONCILE_FOLLOWUP_MS = env_int("GANTRY_RECONCILE_FOLLOWUP_MS", 500, minimum=50)
# Every call to Serve is bounded by this; the reconcile task by the time limit (soft; hard = +30 s).
GANTRY_SERVE_CALL_TIMEOUT_S = env_int("GANTRY_SERVE_CALL_TIMEOUT_S", 60, minimum=1)
GANTRY_RECONCILE_TIME_LIMIT_S = env_int("GANTRY_RECONCILE_TIME_LIMIT_S", 300, minimum=10)
# How often leaked /dev/shm segments of stopped replicas are looked for on every Ray node.
GANTRY_SHM_REAP_INTERVAL_S = env_int("GANTRY_SHM_REAP_INTERVAL_S", 600, minimum=10)

# Preflight (gates/preflight/): what a spec's `preflight:` block gets when it leaves a key out.
GANTRY_PREFLIGHT_IGNORE_VERSIONS = env_list("GANTRY_PREFLIGHT_IGNORE_VERSIONS", [])
GANTRY_PREFLIGHT_SECRETS = env_list("GANTRY_PREFLIGHT_SECRETS", [])
GANTRY_PREFLIGHT_SECRET_TIMEOUT_S = env_int("GANTRY_PREFLIGHT_SECRET_TIMEOUT_S", 90, minimum=0)
GANTRY_PREFLIGHT_CUDA_PROBE_MODE = env_choice("GANTRY_PREFLIGHT_CUDA_PROBE_MODE", "fallback", ("fallback", "warn", "fail"))
GANTRY_PREFLIGHT_VRAM_FIT = env_choice("GANTRY_PREFLIGHT_VRAM_FIT", "warn", ("warn", "fail", "off"))
# How long the cluster's package and driver versions are trusted before a preflight asks again.
GANTRY_PREFLIGHT_RUNTIME_TTL_S = env_int("GANTRY_PREFLIGHT_RUNTIME_TTL_S", 600, minimum=0)


def _check_preflight_defaults() -> None:
    # Held to the same rules as a spec's block, so a typo here stops start-up instead of every deploy.
    from gates.preflight.config import PreflightConfigError, validate_block

    names = {"ignore_versions": "GANTRY_PREFLIGHT_IGNORE_VERSIONS", "secrets": "GANTRY_PREFLIGHT_SECRETS"}
    try:
        validate_block({"ignore_versions": GANTRY_PREFLIGHT_IGNORE_VERSIONS, "secrets": GANTRY_PREFLIGHT_SECRETS})
    except PreflightConfigError as exc:
        setting = names.get(exc.field.removeprefix("preflight."), exc.field)
        raise ConfigError(f"{setting}: {exc.message}") from None


_check_preflight_defaults()


def _secrets_keys() -> list[str]:
    """Fernet keys for users' secrets (GANTRY_SECRETS_KEYS or GANTRY_SECRETS_KEYS_FILE), newest
    first: the first encrypts, any of them decrypts, so a new key is prepended and an old one
    dropped only after `manage.py rotate_secrets`. Empty: the store derives a key from SECRET_KEY
    (gates/secrets.py), which then must never change."""
    keys = [key.strip() for key in env_secret("GANTRY_SECRETS_KEYS").split(",") if key.strip()]
    for number, key in enumerate(keys, 1):
        try:
            valid = len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
        except (ValueError, UnicodeEncodeError):
            valid = False
        if not valid:  # the key itself is never echoed: it is a secret
            raise ConfigError(
                f"GANTRY_SECRETS_KEYS: key {number} of {len(keys)} is not a Fernet key (32 bytes, url-safe base64). "
                "Make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
            )
    return keys


GANTRY_SECRETS_KEYS = _secrets_keys()

# The model page's playground: calls per user and minute (a compare counts two), and how long one
# streamed answer may take.
GANTRY_PLAYGROUND_CALLS_PER_MINUTE = env_int("GANTRY_PLAYGROUND_CALLS_PER_MINUTE", 20, minimum=1)
GANTRY_PLAYGROUND_TIMEOUT_S = env_int("GANTRY_PLAYGROUND_TIMEOUT_S", 120, minimum=1)

# Gate runs: a worker holds a run's lease while it runs a step (renewed during a long eval); a run
# whose worker died is taken over this long after. The eval asks the deployment a few rows at a time,
# greedy, each answer at most this many tokens.
GANTRY_GATE_LEASE_S = env_int("GANTRY_GATE_LEASE_S", 60, minimum=5)
GANTRY_GATE_POLL_S = env_int("GANTRY_GATE_POLL_S", 2, minimum=1)
GANTRY_GATE_MAX_TOKENS = env_int("GANTRY_GATE_MAX_TOKENS", 64, minimum=1)
GANTRY_GATE_EVAL_CONCURRENCY = env_int("GANTRY_GATE_EVAL_CONCURRENCY", 4, minimum=1)
GANTRY_GATE_CALL_TIMEOUT_S = env_int("GANTRY_GATE_CALL_TIMEOUT_S", 120, minimum=1)

# Periodic work; each app's issue adds its own entries (reconcile, probes).
CELERY_BEAT_SCHEDULE: dict = {
    # Repairs drift both ways and moves DEPLOYING models on from what Serve reports.
    "serving-reconcile": {"task": "serving.tasks.reconcile", "schedule": float(GANTRY_RECONCILE_INTERVAL_S)},
}
GANTRY_DEPENDENCY_TIMEOUT = float(env_int("GANTRY_DEPENDENCY_TIMEOUT_MS", 1000, minimum=50)) / 1000
# Health probes: how often beat runs them, how long each may take, how many bad readings in a row
# flip a check (one slow probe must not page anyone), and where flips to down are sent.
GANTRY_HEALTH_INTERVAL_S = env_int("GANTRY_HEALTH_INTERVAL_S", 15, minimum=1)
GANTRY_HEALTH_PROBE_TIMEOUT_S = env_int("GANTRY_HEALTH_PROBE_TIMEOUT_S", 5, minimum=1)
GANTRY_HEALTH_GRACE_READINGS = env_int("GANTRY_HEALTH_GRACE_READINGS", 2, minimum=1)
# A check its probe cannot read (unknown) for more than this many cycles in a row pages once as "blind".
GANTRY_HEALTH_BLIND_CYCLES = env_int("GANTRY_HEALTH_BLIND_CYCLES", 4, minimum=1)
GANTRY_HEALTH_WEBHOOK_URL = env_str("GANTRY_HEALTH_WEBHOOK_URL", "")
GANTRY_HEALTH_ALERT_EMAILS = env_list("GANTRY_HEALTH_ALERT_EMAILS", [])
GANTRY_HEALTH_ALERT_TIMEOUT_S = env_int("GANTRY_HEALTH_ALERT_TIMEOUT_S", 5, minimum=1)
# E-mail for those alerts. With EMAIL_HOST set, SMTP; without it the console backend, so a laptop's
# alerts show in the worker's log instead of failing against a port 25 nobody listens on.
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST else "django.core.mail.backends.console.EmailBackend")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ConfigError("EMAIL_USE_TLS and EMAIL_USE_SSL are both set: choose one (TLS = STARTTLS, usually port 587; SSL = port 465).")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "gantry@localhost")
# A mail server that does not answer must not hold a probe cycle's alerts for ever.
EMAIL_TIMEOUT = GANTRY_HEALTH_ALERT_TIMEOUT_S
GANTRY_HEALTH_QUEUE_WARN_S = env_int("GANTRY_HEALTH_QUEUE_WARN_S", 60, minimum=1)
GANTRY_HEALTH_QUEUE_CRITICAL_S = env_int("GANTRY_HEALTH_QUEUE_CRITICAL_S", 300, minimum=1)
# GPU samples: how long they are kept (every one for the last hour, then one per 5 minutes).
GANTRY_HEALTH_GPU_SAMPLES_HOURS = env_int("GANTRY_HEALTH_GPU_SAMPLES_HOURS", 24, minimum=1)
# A cycle not started within one interval is dropped: the next one reads fresher anyway.
# Gate runs nobody advances (a lost message, a dead worker) are sent on again.
CELERY_BEAT_SCHEDULE["gates-stalled-runs"] = {"task": "gates.tasks.resend_stalled_gate_runs", "schedule": float(GANTRY_RECONCILE_INTERVAL_S), "options": {"expires": float(GANTRY_RECONCILE_INTERVAL_S)}}
CELERY_BEAT_SCHEDULE["health-probes"] = {"task": "health.tasks.run_probes", "schedule": float(GANTRY_HEALTH_INTERVAL_S), "options": {"expires": float(GANTRY_HEALTH_INTERVAL_S)}}
CELERY_BEAT_SCHEDULE["health-gpu-samples"] = {"task": "health.tasks.thin_gpu_samples", "schedule": 300.0, "options": {"expires": 300.0}}
# Live engine metrics (serving/engine_metrics.py): how often every Ray node's metrics endpoint is
# read, each read's bound, the window rates and quantiles cover (several of Ray's 10 s pushes to the
# export, so neighbouring scrapes' aliasing evens out), and how long samples are kept. On the health
# queue: a probe-like read that must not wait behind a deploy on the serve queue.
GANTRY_ENGINE_METRICS_INTERVAL_S = env_int("GANTRY_ENGINE_METRICS_INTERVAL_S", 10, minimum=1)
GANTRY_ENGINE_METRICS_TIMEOUT_S = env_int("GANTRY_ENGINE_METRICS_TIMEOUT_S", 5, minimum=1)
GANTRY_ENGINE_METRICS_WINDOW_S = env_int("GANTRY_ENGINE_METRICS_WINDOW_S", 30, minimum=1)
GANTRY_ENGINE_METRICS_KEEP_MINUTES = env_int("GANTRY_ENGINE_METRICS_KEEP_MINUTES", 60, minimum=1)
CELERY_TASK_ROUTES = {"serving.tasks.scrape_engine_metrics": {"queue": "health"}, **CELERY_TASK_ROUTES}
CELERY_BEAT_SCHEDULE["serving-engine-metrics"] = {"task": "serving.tasks.scrape_engine_metrics", "schedule": float(GANTRY_ENGINE_METRICS_INTERVAL_S), "options": {"expires": float(GANTRY_ENGINE_METRICS_INTERVAL_S), "queue": "health"}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
