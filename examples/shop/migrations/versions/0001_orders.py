"""Orders.

Revision ID: shop_0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "shop_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("customer", sa.Text(), nullable=False),
        sa.Column("total", sa.Numeric(10, 2), nullable=False),
        sa.Column("placed_at", sa.DateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("invoice_number", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("orders")
