"""inference results: stored once per (device, epoch, seq), with streams, gaps, conflicts
and the boots that correct device clocks

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

String = sqlmodel.sql.sqltypes.AutoString
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "result",
        sa.Column("id", BigId, nullable=False),
        sa.Column("device_id", String(length=40), nullable=False),
        sa.Column("epoch", String(length=16), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device_time", sa.Float(), nullable=False),
        sa.Column("corrected", sa.Boolean(), nullable=False),
        sa.Column("boot_id", String(length=64), nullable=False),
        sa.Column("digest", String(length=256), nullable=False),
        sa.Column("slot", String(length=1), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("encoding", String(length=8), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "epoch", "seq"),
    )
    op.create_index("ix_result_device_time", "result", ["device_id", "time"])
    op.create_index("ix_result_time", "result", ["time"])
    op.create_table(
        "resultstream",
        sa.Column("device_id", String(length=40), nullable=False),
        sa.Column("epoch", String(length=16), nullable=False),
        sa.Column("acked", sa.BigInteger(), nullable=False),
        sa.Column("stored", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("refused", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("device_id", "epoch"),
    )
    for table in ("resultgap", "resultconflict"):
        extra = (
            [
                sa.Column("first", sa.BigInteger(), nullable=False),
                sa.Column("last", sa.BigInteger(), nullable=False),
                sa.Column("reason", String(length=32), nullable=False),
            ]
            if table == "resultgap"
            else [
                sa.Column("seq", sa.BigInteger(), nullable=False),
                sa.Column("encoding", String(length=8), nullable=False),
                sa.Column("payload", sa.Text(), nullable=False),
            ]
        )
        op.create_table(
            table,
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("device_id", String(length=40), nullable=False),
            sa.Column("epoch", String(length=16), nullable=False),
            *extra,
            sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(f"ix_{table}_device_id", table, ["device_id"])
    op.create_table(
        "deviceboot",
        sa.Column("device_id", String(length=40), nullable=False),
        sa.Column("boot_id", String(length=64), nullable=False),
        sa.Column("started", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("device_id", "boot_id"),
    )


def downgrade() -> None:
    op.drop_table("deviceboot")
    for table in ("resultconflict", "resultgap"):
        op.drop_index(f"ix_{table}_device_id", table_name=table)
        op.drop_table(table)
    op.drop_table("resultstream")
    op.drop_index("ix_result_time", table_name="result")
    op.drop_index("ix_result_device_time", table_name="result")
    op.drop_table("result")
