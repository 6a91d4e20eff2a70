"""wave rollouts: rollouts, their waves, devices and events, the engine's lease, and the
revision a profile's followers get (``released_revision``)

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

String = sqlmodel.sql.sqltypes.AutoString
Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Existing profiles keep releasing their latest revision to their followers.
    with op.batch_alter_table("profile", schema=None) as batch_op:
        batch_op.add_column(sa.Column("released_revision", sa.Integer(), nullable=True))
    op.create_table(
        "rollout",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("target_revision", sa.Integer(), nullable=False),
        sa.Column("from_revision", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", String(length=16), nullable=False),
        sa.Column("reason", String(length=1024), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("waves_total", sa.Integer(), nullable=False),
        sa.Column("accepted_failures", sa.Integer(), nullable=False),
        sa.Column("created_by", String(length=128), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
        sa.Column("finished_at", Stamp, nullable=True),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollout_profile_id", "rollout", ["profile_id"])
    op.create_index("ix_rollout_state", "rollout", ["state"])
    op.create_table(
        "rolloutwave",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("step", String(length=64), nullable=False),
        sa.Column("state", String(length=16), nullable=False),
        sa.Column("started_at", Stamp, nullable=True),
        sa.Column("bake_until", Stamp, nullable=True),
        sa.Column("finished_at", Stamp, nullable=True),
        sa.Column("commits", sa.JSON(), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollout.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rollout_id", "number"),
    )
    op.create_index("ix_rolloutwave_rollout_id", "rolloutwave", ["rollout_id"])
    op.create_table(
        "rolloutdevice",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", String(length=40), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", String(length=16), nullable=False),
        sa.Column("previous_revision", sa.Integer(), nullable=True),
        sa.Column("offline", sa.Boolean(), nullable=False),
        sa.Column("known_attempt", String(length=64), nullable=True),
        sa.Column("moved_at", Stamp, nullable=True),
        sa.Column("resolved_at", Stamp, nullable=True),
        sa.Column("reason", String(length=1024), nullable=False),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollout.id"]),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
    )
    op.create_index("ix_rolloutdevice_device_id", "rolloutdevice", ["device_id"])
    # Covers a step's tally (failures, the wave's pending and updating devices, their
    # earliest move): read from the index alone, however large the wave.
    op.create_index(
        "ix_rolloutdevice_state",
        "rolloutdevice",
        ["rollout_id", "state", "wave", "offline", "moved_at"],
    )
    op.create_table(
        "rolloutevent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("at", Stamp, nullable=False),
        sa.Column("actor", String(length=128), nullable=False),
        sa.Column("action", String(length=32), nullable=False),
        sa.Column("reason", String(length=1024), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollout.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rolloutevent_rollout_id", "rolloutevent", ["rollout_id"])
    lease = op.create_table(
        "enginelease",
        sa.Column("name", String(length=32), nullable=False),
        sa.Column("holder", String(length=128), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(
        lease, [{"name": "rollouts", "holder": "", "expires_at": 0.0, "acquired_at": 0.0}]
    )


def downgrade() -> None:
    for table in ("enginelease", "rolloutevent", "rolloutdevice", "rolloutwave", "rollout"):
        op.drop_table(table)
    with op.batch_alter_table("profile", schema=None) as batch_op:
        batch_op.drop_column("released_revision")
