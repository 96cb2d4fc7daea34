"""Background work of the shop: plain module-level functions, queued by name.

A task runs in a process of its own, forked by a pgbg worker; it opens its own database
connection, like any other process of the application.
"""

from __future__ import annotations

import pgbg
from shop import database
from shop.models import Order


def issue_invoice(order_id: int) -> str:
    """Give the order an invoice number (a stand-in for rendering and mailing a PDF)."""
    pgbg.record_task_related("order", str(order_id))  # reports join tasks to orders on this
    with database.session() as session, session.begin():
        order = session.get(Order, order_id)
        if order is None:
            raise LookupError(f"no order {order_id}")
        order.invoice_number = f"INV-{order_id:06d}"
        pgbg.record_task_info(f"invoice {order.invoice_number} for {order.customer}")
        return order.invoice_number
