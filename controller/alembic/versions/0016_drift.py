"""drift windows from devices' status reports, and drift references read from the
registry (issue 14)

Revision ID: 0016
Revises: 0015
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

String = sqlmodel.sql.sqltypes.AutoString
Stamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "driftwindow",
        sa.Column("id", BigId, nullable=False),
        sa.Column("device_id", String(length=40), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=True),
        sa.Column("model", String(length=128), nullable=False),
        sa.Column("model_digest", String(length=80), nullable=False),
        sa.Column("artifact", String(length=512), nullable=False),
        sa.Column("reference", String(length=80), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Integer(), nullable=False),
        sa.Column("seen", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("received_at", Stamp, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "model", "reference", "start"),
    )
    op.create_index("ix_driftwindow_device_id", "driftwindow", ["device_id"])
    op.create_index("ix_driftwindow_start", "driftwindow", ["start"])
    op.create_table(
        "driftreference",
        sa.Column("digest", String(length=80), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("fetched_at", Stamp, nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )


def downgrade() -> None:
    op.drop_table("driftreference")
    op.drop_index("ix_driftwindow_start", table_name="driftwindow")
    op.drop_index("ix_driftwindow_device_id", table_name="driftwindow")
    op.drop_table("driftwindow")
