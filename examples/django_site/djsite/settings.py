"""Settings of the example site: a small OpenREM-like application on pgbg.

The database comes from ``DJSITE_DATABASE_URL`` (a libpq URL or conninfo string), e.g.
``postgresql://user:password@localhost/djsite``.
"""

from __future__ import annotations

import os
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJSITE_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJSITE_DEBUG", "") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "pgbg.contrib.django",
    "studies",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "djsite.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]


def _database(url: str) -> dict[str, object]:
    params = conninfo_to_dict(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", "djsite"),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,  # sslmode and the like
    }


DATABASES = {"default": _database(os.environ.get("DJSITE_DATABASE_URL",
                                                 "postgresql:///djsite"))}

# pgbg: the django.tasks backend; pgbg's schema lives in DATABASES["default"] (PGBG_DATABASE)
TASKS = {"default": {"BACKEND": "pgbg.contrib.django.PgbgBackend",
                     "OPTIONS": {"max_attempts": 1}}}
PGBG_DATABASE = "default"

# How long importing one series takes (the example's stand-in for real work), and a file
# whose presence holds every import at its next series (the tests use it to hold a task
# running until they let it go).
STUDIES_SECONDS_PER_SERIES = float(os.environ.get("STUDIES_SECONDS_PER_SERIES", "0.05"))
STUDIES_HOLD_FILE = os.environ.get("STUDIES_HOLD_FILE", "")

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/admin/login/"
