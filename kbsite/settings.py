"""Settings for kbsite, read from the environment with embedded defaults (SQLite, local Qdrant)."""

import json
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from kbsite.secret_key import read_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value if value else default


def env_bool(name: str, default: bool) -> bool:
    value = env_str(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use true or false.")


def env_number(name: str, default: float, cast: type = int) -> float:
    value = env_str(name)
    if value is None:
        return default
    try:
        return cast(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a {cast.__name__}.") from None


def env_list(name: str, default: list[str]) -> list[str]:
    value = env_str(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# Everything the embedded default writes (database, Qdrant store, uploads) lives here.
VAR_DIR = Path(env_str("KBSITE_VAR_DIR", str(BASE_DIR / "var")))

# The key: DJANGO_SECRET_KEY, else the one `manage.py bootstrap` (part of `make run`) wrote into var/ once,
# else a public one, which `check --deploy` warns about (knowledge.W001).
SECRET_KEY_FILE = VAR_DIR / "secret_key"
DEFAULT_SECRET_KEY = "django-insecure-kbsite-embedded-default-change-me"
SECRET_KEY = env_str("DJANGO_SECRET_KEY") or read_secret_key(SECRET_KEY_FILE) or DEFAULT_SECRET_KEY
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# Served over HTTPS only (behind a proxy that terminates TLS: uvicorn trusts its X-Forwarded-Proto from
# 127.0.0.1, FORWARDED_ALLOW_IPS widens that): cookies go over HTTPS only and plain HTTP is redirected.
HTTPS = env_bool("DJANGO_HTTPS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = HTTPS
# Health probes from inside the network may ask over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^api/v1/health$"]
# Strict-Transport-Security: browsers refuse plain HTTP to the site for this long, which cannot be taken
# back before it runs out; off unless set.
SECURE_HSTS_SECONDS = env_number("DJANGO_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)

INSTALLED_APPS = [
    # First, so its templates (the admin's kbsite header and favicon) override Django's own.
    "knowledge.apps.KnowledgeConfig",
    "search.apps.SearchConfig",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "axes",
]

MIDDLEWARE = [
    "knowledge.metrics.request_metrics_middleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into the page saying when to try again.
    "axes.middleware.AxesMiddleware",
]

# /metrics answers staff signed in, or a scraper sending "Authorization: Bearer <this>" (unset: staff only).
METRICS_TOKEN = env_str("KBSITE_METRICS_TOKEN")

# django-axes refuses logins (the admin's and the members' /accounts/login/) for a user name from an
# address after too many failures there, until a cool-off has passed; other users and addresses go on.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_number("KBSITE_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_number("KBSITE_LOGIN_COOLOFF_MINUTES", 15, float))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Attempts while locked out do not restart the wait, so the page's "try again at" holds.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "knowledge.web.lockout.locked_out"
# Only failed attempts matter for the lockout; a row per successful login would grow without end.
AXES_DISABLE_ACCESS_LOG = True
# The address a lockout counts against is one a client cannot choose. uvicorn takes X-Forwarded-For as
# the client's address from any connection on 127.0.0.1, so a client there could claim a new address per
# attempt: by default a request carrying that header counts against one shared address instead. Behind
# proxies, name them (comma-separated addresses): the address the nearest of them saw is used.
AXES_CLIENT_IP_CALLABLE = "knowledge.web.lockout.client_address"
LOGIN_TRUSTED_PROXIES = env_list("KBSITE_TRUSTED_PROXIES", [])

ROOT_URLCONF = "kbsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "knowledge.web.links.site_links",
            ],
        },
    },
]

WSGI_APPLICATION = "kbsite.wsgi.application"
# Sessions read from the cache, written through to the database: a signed-in page is spared a query.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
ASGI_APPLICATION = "kbsite.asgi.application"

# Database: DATABASE_URL (PostgreSQL in production), else a SQLite file in WAL mode.
_SQLITE_OPTIONS = {
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock up front so
    # concurrent writers queue on busy_timeout instead of failing with "database is locked".
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;",
    "transaction_mode": "IMMEDIATE",
}
DATABASE_URL = env_str("DATABASE_URL")
# Persistent connections: the API's database work runs on one long-lived thread (kbsite/handlers.py).
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        DATABASES["default"]["OPTIONS"] = dict(_SQLITE_OPTIONS)
else:
    # SQLite cannot create its file in a missing folder; this is the one folder the default needs.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "kbsite.sqlite3",
            "OPTIONS": dict(_SQLITE_OPTIONS),
            "CONN_MAX_AGE": 600,
            "CONN_HEALTH_CHECKS": True,
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# New passwords are hashed with Argon2id at OWASP's minimum; PBKDF2 ones (Django's default) still
# sign in and are re-hashed then. Hashing runs on threads that yield the CPU to searches by this many
# nice steps (Linux; 0 to 19, 0 keeps the priority): kbsite/hashers.py. One hasher per algorithm name:
# Django reads a stored password with the last hasher listed under its name.
PASSWORD_HASHERS = [
    "kbsite.hashers.YieldingArgon2PasswordHasher",
    "kbsite.hashers.YieldingPBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
PASSWORD_HASHING_NICENESS = env_number("KBSITE_PASSWORD_HASHING_NICENESS", 10)

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

# kbsite/asgi.py serves these itself (async, unlike WhiteNoise's middleware); a proxy may take over.
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "discard": {"class": "logging.NullHandler"},
    },
    "loggers": {
        "kbsite": {"handlers": ["console"], "level": env_str("KBSITE_LOG_LEVEL", "INFO")},
        "search": {"handlers": ["console"], "level": env_str("KBSITE_LOG_LEVEL", "INFO")},
        "knowledge": {"handlers": ["console"], "level": env_str("KBSITE_LOG_LEVEL", "INFO")},
        # pypdf warns in many lines about nearly every PDF (a font it cannot fully decode, a fix it
        # applied); knowledge.ingestion.extraction collects those per file and logs one line naming the file.
        "pypdf": {"handlers": ["discard"], "propagate": False},
    },
}

# Qdrant: QDRANT_URL set means a server (or cluster); unset means the embedded store (Qdrant Edge).
QDRANT = {
    "URL": env_str("QDRANT_URL"),
    "PATH": env_str("QDRANT_PATH", str(VAR_DIR / "qdrant")),
    "API_KEY": env_str("QDRANT_API_KEY"),
    "GRPC_PORT": env_number("QDRANT_GRPC_PORT", 6334),
    "PREFER_GRPC": env_bool("QDRANT_PREFER_GRPC", True),
    "TIMEOUT": env_number("QDRANT_TIMEOUT", 10.0, float),
    # A server or cluster only (docs/DEPLOY.md): how new collections are laid out, and how often an
    # idempotent call is tried again after UNAVAILABLE or DEADLINE_EXCEEDED (doubling from the backoff).
    "SHARD_NUMBER": env_number("QDRANT_SHARD_NUMBER", 1),
    "REPLICATION_FACTOR": env_number("QDRANT_REPLICATION_FACTOR", 1),
    "WRITE_CONSISTENCY_FACTOR": env_number("QDRANT_WRITE_CONSISTENCY_FACTOR", 1),
    "ON_DISK_VECTORS": env_bool("QDRANT_ON_DISK_VECTORS", False),
    "ON_DISK_PAYLOAD": env_bool("QDRANT_ON_DISK_PAYLOAD", False),
    "RETRIES": env_number("QDRANT_RETRIES", 2),
    "RETRY_BACKOFF": env_number("QDRANT_RETRY_BACKOFF", 0.2, float),
    # The embedded store only: threads each open collection searches its segments with (0: one per
    # two cores, at least 1, at most 8; README, "Configuration").
    "EDGE_SEARCH_THREADS": env_number("QDRANT_EDGE_SEARCH_THREADS", 0),
    # The embedded engine: Qdrant Edge, or qdrant-client's pure-Python local mode (for comparisons only).
    "EMBEDDED_ENGINE": env_str("QDRANT_EMBEDDED_ENGINE", "edge"),
}

# How long a thread may hold the GIL before another (the server's event loop) gets a turn, in the
# server (kbsite.lifespan.shorten_gil_turns): 1 ms, not Python's 5 (README, "How it is built").
GIL_SWITCH_INTERVAL_MS = env_number("KBSITE_GIL_SWITCH_INTERVAL_MS", 1.0, float)
if not GIL_SWITCH_INTERVAL_MS > 0:
    raise ImproperlyConfigured("KBSITE_GIL_SWITCH_INTERVAL_MS must be a number of milliseconds above 0 (default 1).")

# The embedder turns text into vectors; the default runs offline from the PyPI package.
BUILT_IN_EMBEDDER = "search.embedding.minilm.MiniLMEmbedder"
embedding_threads = env_number("EMBEDDING_THREADS", min(os.cpu_count() or 1, 4))
EMBEDDING = {
    "BACKEND": env_str("EMBEDDING_BACKEND", BUILT_IN_EMBEDDER),
    "THREADS": embedding_threads,
    "QUERY_THREADS": env_number("EMBEDDING_QUERY_THREADS", 1),
    # Threads calling the queries' model at once (one shared copy): a burst's batches run side by side.
    "QUERY_WORKERS": env_number("EMBEDDING_QUERY_WORKERS", min(os.cpu_count() or 1, 2)),
    "QUERY_BATCH_SIZE": env_number("EMBEDDING_QUERY_BATCH_SIZE", 64),
    # Threads calling the documents' model at once (one shared copy), EMBEDDING_THREADS split between them.
    "DOCUMENT_WORKERS": env_number("EMBEDDING_DOCUMENT_WORKERS", embedding_threads),
    "DOCUMENT_BATCH_SIZE": env_number("EMBEDDING_DOCUMENT_BATCH_SIZE", 8),
    # Indexing yields the CPU to searches: its model threads run this many nice steps lower (Linux).
    "DOCUMENT_NICENESS": env_number("EMBEDDING_DOCUMENT_NICENESS", 10),
    "QUERY_CACHE_SIZE": env_number("EMBEDDING_QUERY_CACHE_SIZE", 1024),
    # Keyword arguments of the backend beyond its threads. The built-in model embeds queries on int8
    # kernels: under half the CPU a query, vectors at cosine 0.98 or more to the float model's (README).
    "OPTIONS": {},
}
if EMBEDDING["BACKEND"] == BUILT_IN_EMBEDDER:
    EMBEDDING["OPTIONS"]["int8_queries"] = env_bool("EMBEDDING_INT8_QUERIES", True)
    # The models made from the shipped one (the queries' int8 model, the documents' less its softmax
    # guards) are kept here, 23 MB each, for the next process to load. Sites may share the folder.
    EMBEDDING["OPTIONS"]["cache_dir"] = env_str("EMBEDDING_CACHE_DIR", str(VAR_DIR / "cache"))

# More embedders a knowledge base may choose, by name: OpenAI-compatible endpoints, as JSON, e.g.
# {"e5-large": {"BASE_URL": "https://embed.example.com/v1", "MODEL": "intfloat/e5-large-v2",
#  "DIMENSIONS": 1024, "BATCH_SIZE": 32, "TIMEOUT": 30, "API_KEY_ENV": "E5_API_KEY"}}.
# DIMENSIONS may be left out (the endpoint is asked once); the key is read from the variable API_KEY_ENV names.
try:
    EMBEDDERS = json.loads(env_str("EMBEDDERS_JSON", "{}") or "{}")
except json.JSONDecodeError as exc:
    raise ImproperlyConfigured(f"EMBEDDERS_JSON is not valid JSON ({exc}): see README, Embedders.") from None
if not isinstance(EMBEDDERS, dict):
    raise ImproperlyConfigured("EMBEDDERS_JSON must be a JSON object of embedder name to its settings.")

# Chunking defaults, in tokens of the embedder's tokenizer.
CHUNKING = {
    "SIZE": env_number("CHUNK_SIZE", 200),
    "OVERLAP": env_number("CHUNK_OVERLAP", 40),
    # A document that would make more chunks fails, saying so, rather than taking hours to embed.
    "MAX_CHUNKS_PER_DOCUMENT": env_number("KBSITE_MAX_CHUNKS_PER_DOCUMENT", 20_000),
}

# Who may create knowledge bases (members' pages and API): everyone signed in, "staff", or "group:<name>".
KB_CREATORS = env_str("KBSITE_KB_CREATORS", "everyone")

# Ingestion: what an upload may be, and how the worker retries and holds documents.
INGESTION = {
    "MAX_UPLOAD_BYTES": env_number("KBSITE_MAX_UPLOAD_MB", 20, float) * 1024 * 1024,
    # An upload whose text grows past this (a PDF or DOCX "bomb") fails instead of filling the disk.
    "MAX_EXTRACTED_CHARS": env_number("KBSITE_MAX_EXTRACTED_CHARS", 5_000_000),
    "MAX_PDF_PAGES": env_number("KBSITE_MAX_PDF_PAGES", 2000),
    "MAX_UNZIPPED_BYTES": env_number("KBSITE_MAX_UNZIPPED_MB", 200, float) * 1024 * 1024,
    # Each uploaded file is read in a child process within this budget of time and memory.
    "EXTRACTION_SECONDS": env_number("KBSITE_EXTRACTION_SECONDS", 120, float),
    "EXTRACTION_MEMORY_MB": env_number("KBSITE_EXTRACTION_MEMORY_MB", 1024, float),
    # Run the ingestion worker inside the web server: needed with the embedded store, which only
    # one process may open. "auto" means: when QDRANT_URL is unset.
    "IN_PROCESS_WORKER": env_str("KBSITE_IN_PROCESS_WORKER", "auto"),
    "MAX_ATTEMPTS": env_number("KBSITE_INGEST_MAX_ATTEMPTS", 5),
    "LEASE_SECONDS": env_number("KBSITE_INGEST_LEASE_SECONDS", 300),
    "POLL_SECONDS": env_number("KBSITE_INGEST_POLL_SECONDS", 2.0, float),
    # Documents one worker has in work at once; a big file taking its time does not hold up the next.
    "CONCURRENCY": env_number("KBSITE_INGEST_CONCURRENCY", 2),
}
DATA_UPLOAD_MAX_MEMORY_SIZE = int(INGESTION["MAX_UPLOAD_BYTES"]) + 1024 * 1024

# Search: who may read which knowledge base and where documents' texts are (classes of the knowledge app),
# and how often a token may search.
# Uploads (files and text documents) have a limit of their own; "off" turns either off.
_search_rate = env_str("KBSITE_SEARCH_RATE_LIMIT", "600/min")
_upload_rate = env_str("KBSITE_UPLOAD_RATE_LIMIT", "60/min")
SEARCH = {
    "PERMISSION_SERVICE": "knowledge.services.permissions.PermissionService",
    "DOCUMENT_TEXTS": "knowledge.services.document_texts.DocumentTextService",
    "KB_INDEXES": "knowledge.services.knowledge_bases.KnowledgeBaseIndexes",
    "RATE_LIMIT": None if _search_rate.lower() in {"off", "none", "0"} else _search_rate,
    "UPLOAD_RATE_LIMIT": None if _upload_rate.lower() in {"off", "none", "0"} else _upload_rate,
}
