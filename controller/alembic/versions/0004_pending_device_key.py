"""pending device key: a known device that lost its key waits for an operator;
hardware ids indexed (every enrolment looks for a device that already has one)

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pending_key_pin", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True)
        )
        batch_op.add_column(sa.Column("pending_key_pem", sa.String(), nullable=True))
        batch_op.create_unique_constraint("uq_device_pending_key_pin", ["pending_key_pin"])
        batch_op.create_index("ix_device_hardware_id", ["hardware_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_index("ix_device_hardware_id")
        batch_op.drop_constraint("uq_device_pending_key_pin", type_="unique")
        batch_op.drop_column("pending_key_pem")
        batch_op.drop_column("pending_key_pin")
