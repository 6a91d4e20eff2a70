"""shadow comparisons: agreement windows from devices' status reports, and a rollout
wave's shadow phase with its evidence (issue 14)

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

String = sqlmodel.sql.sqltypes.AutoString
Stamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "shadowwindow",
        sa.Column("id", BigId, nullable=False),
        sa.Column("device_id", String(length=40), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=True),
        sa.Column("key", String(length=256), nullable=False),
        sa.Column("model", String(length=128), nullable=False),
        sa.Column("active_digest", String(length=256), nullable=False),
        sa.Column("candidate_digest", String(length=256), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Integer(), nullable=False),
        sa.Column("compared", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("top1_total", sa.BigInteger(), nullable=False),
        sa.Column("top1_agree", sa.BigInteger(), nullable=False),
        sa.Column("abs_diff_sum", sa.Float(), nullable=False),
        sa.Column("abs_diff_max", sa.Float(), nullable=False),
        sa.Column("active_p95_ms", sa.Float(), nullable=True),
        sa.Column("candidate_p95_ms", sa.Float(), nullable=True),
        sa.Column("received_at", Stamp, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "key", "model", "candidate_digest", "start"),
    )
    op.create_index("ix_shadowwindow_device_id", "shadowwindow", ["device_id"])
    op.create_index("ix_shadowwindow_start", "shadowwindow", ["start"])
    op.create_index("ix_shadowwindow_key", "shadowwindow", ["key", "start"])
    with op.batch_alter_table("rolloutwave") as batch:
        batch.add_column(sa.Column("shadow_until", Stamp, nullable=True))
        batch.add_column(sa.Column("shadow", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rolloutwave") as batch:
        batch.drop_column("shadow")
        batch.drop_column("shadow_until")
    op.drop_index("ix_shadowwindow_key", table_name="shadowwindow")
    op.drop_index("ix_shadowwindow_start", table_name="shadowwindow")
    op.drop_index("ix_shadowwindow_device_id", table_name="shadowwindow")
    op.drop_table("shadowwindow")
