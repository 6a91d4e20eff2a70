"""QR enrolment codes: a registration token may carry the hash of a short code

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("registrationtoken", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("code_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.create_index(
            batch_op.f("ix_registrationtoken_code_hash"), ["code_hash"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("registrationtoken", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registrationtoken_code_hash"))
        batch_op.drop_column("code_hash")
