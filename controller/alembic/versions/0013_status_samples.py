"""status history for the console's charts: one sample per device and period, and
per-period rollups of each site and of the fleet

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

String = sqlmodel.sql.sqltypes.AutoString
Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devicesample",
        sa.Column("device_id", String(length=40), nullable=False),
        sa.Column("at", Stamp, nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("state", String(length=32), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("applied_revision", sa.Integer(), nullable=True),
        sa.Column("p95_ms", sa.Float(), nullable=True),
        sa.Column("error_rate", sa.Float(), nullable=True),
        sa.Column("buffer_depth", sa.BigInteger(), nullable=False),
        sa.Column("buffer_drops", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "at"),
    )
    op.create_index("ix_devicesample_at", "devicesample", ["at"])
    op.create_index("ix_devicesample_site_at", "devicesample", ["site_id", "at"])
    op.create_table(
        "samplerollup",
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("at", Stamp, nullable=False),
        sa.Column("reporting", sa.Integer(), nullable=False),
        sa.Column("unhealthy", sa.Integer(), nullable=False),
        sa.Column("p95_median_ms", sa.Float(), nullable=True),
        sa.Column("p95_max_ms", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("site_id", "at"),
    )
    op.create_index("ix_samplerollup_at", "samplerollup", ["at"])


def downgrade() -> None:
    op.drop_index("ix_samplerollup_at", table_name="samplerollup")
    op.drop_table("samplerollup")
    op.drop_index("ix_devicesample_site_at", table_name="devicesample")
    op.drop_index("ix_devicesample_at", table_name="devicesample")
    op.drop_table("devicesample")
