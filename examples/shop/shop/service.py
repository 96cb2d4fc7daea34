"""What the shop does, and what it reports: ordinary SQLAlchemy code.

``place_order`` queues the invoice inside the order's own transaction: the task exists if
and only if the order does — no task for an order that was rolled back, no order left
without its task if the process dies between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

import pgbg
from shop import tasks
from shop.models import Order


def place_order(session: Session, customer: str, total: Decimal) -> tuple[Order, pgbg.Result]:
    """Add an order and queue its invoice, in the caller's transaction (not committed here)."""
    order = Order(customer=customer, total=total)
    session.add(order)
    session.flush()  # the order's id, for the task's arguments
    invoice = pgbg.enqueue(tasks.issue_invoice, [order.id], task_type="invoice",
                           max_attempts=3, connection=session)
    return order, invoice


@dataclass(frozen=True)
class OrderReport:
    order_id: int
    customer: str
    invoice_number: str | None
    task_status: str | None  # of the latest invoice task that worked on the order
    attempts: int | None


# pgbg's tables are plain tables: join them like any other. task_link is written by
# record_task_related("order", id) in the task itself.
REPORT = sa.text("""
    SELECT o.id, o.customer, o.invoice_number, t.status::text, t.attempt
      FROM orders o
      LEFT JOIN LATERAL (
            SELECT t.status, t.attempt
              FROM pgbg.task_link l JOIN pgbg.task t ON t.id = l.task_id
             WHERE l.kind = 'order' AND l.key = o.id::text AND t.task_type = 'invoice'
             ORDER BY t.queued_at DESC LIMIT 1) t ON true
     ORDER BY o.id
""")


def order_report(session: Session) -> list[OrderReport]:
    return [OrderReport(*row) for row in session.execute(REPORT)]
