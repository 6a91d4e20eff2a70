"""signing keys made by rotations (access-token and registry token keys), shared by every
worker and replica

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

String = sqlmodel.sql.sqltypes.AutoString
Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "signingkey",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("purpose", String(length=16), nullable=False),
        sa.Column("kid", String(length=64), nullable=False),
        sa.Column("state", String(length=16), nullable=False),
        sa.Column("material", sa.Text(), nullable=True),
        sa.Column("certificate", sa.Text(), nullable=True),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("retire_after", Stamp, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("purpose", "kid"),
    )
    op.create_index("ix_signingkey_purpose", "signingkey", ["purpose"])


def downgrade() -> None:
    op.drop_index("ix_signingkey_purpose", table_name="signingkey")
    op.drop_table("signingkey")
