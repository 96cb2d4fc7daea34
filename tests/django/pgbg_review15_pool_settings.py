"""The tests' settings with Django's psycopg connection pool (``OPTIONS["pool"]``)."""

from pgbg_django_settings import *  # noqa: F403
from pgbg_django_settings import DATABASES

DATABASES["default"]["OPTIONS"] = {**DATABASES["default"].get("OPTIONS", {}),
                                   "pool": {"min_size": 2, "max_size": 4}}
