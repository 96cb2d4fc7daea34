"""The tests' Django settings: the example site's, plus an app of test tasks."""

from djsite.settings import *  # noqa: F403
from djsite.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "pgbg_django_testapp"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
