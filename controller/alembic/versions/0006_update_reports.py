"""update reports: each device's update attempts with their outcome and rollback evidence

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "updaterecord",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("slot", sqlmodel.sql.sqltypes.AutoString(length=1), nullable=True),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "revision", "started_at"),
    )
    with op.batch_alter_table("updaterecord", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_updaterecord_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_updaterecord_outcome"), ["outcome"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_updaterecord_received_at"), ["received_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("updaterecord", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_updaterecord_received_at"))
        batch_op.drop_index(batch_op.f("ix_updaterecord_outcome"))
        batch_op.drop_index(batch_op.f("ix_updaterecord_device_id"))
    op.drop_table("updaterecord")
