"""The shop's database: one engine, from ``SHOP_DATABASE_URL``; pgbg shares it."""

from __future__ import annotations

import os
from functools import cache

import sqlalchemy as sa
from sqlalchemy.orm import Session

import pgbg


@cache
def engine() -> sa.Engine:
    url = os.environ["SHOP_DATABASE_URL"]  # e.g. postgresql+psycopg://shop@db/shop
    shop_engine = sa.create_engine(url)
    pgbg.configure(engine=shop_engine)  # pgbg uses the application's database
    return shop_engine


def session() -> Session:
    return Session(engine())
