"""cache generation counter and its listeners

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 10:00:00.000000

The generation that replicas' caches are invalidated by, and the listeners that
acknowledge it (``controller/pgnotify.py``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "cachegeneration",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "generation": 0}])
    op.create_table(
        "cachelistener",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("backend_pid", sa.Integer(), nullable=False),
        sa.Column("backend_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("cachelistener")
    op.drop_table("cachegeneration")
