"""The application's database: its own table, and an async engine pgbg shares."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from functools import cache

from sqlalchemy import Integer, String, Text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import pgbg.db


class Base(DeclarativeBase):
    pass


class Report(Base):
    """A report the application asked for; built in the background."""

    __tablename__ = "report"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    task_id: Mapped[str | None] = mapped_column(String(36))
    body: Mapped[str | None] = mapped_column(Text)


def url() -> str:
    """``REPORTS_DATABASE_URL``, else the database pgbg uses (the embedded one by default),
    for SQLAlchemy's async psycopg driver."""
    raw = os.environ.get("REPORTS_DATABASE_URL") or pgbg.db.database_url()
    return raw.replace("postgresql://", "postgresql+psycopg://", 1)


@cache
def engine() -> AsyncEngine:
    return create_async_engine(url())


async def session() -> AsyncIterator[AsyncSession]:
    """A FastAPI dependency: one session per request."""
    async with AsyncSession(engine(), expire_on_commit=False) as s:
        yield s
