"""the console and the other ways in: users' passwords and console sessions, claims
shown by devices, device names and hardware replacement

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

String = sqlmodel.sql.sqltypes.AutoString
Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("password_hash", String(length=256), nullable=True))
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", String(length=128), nullable=True))
        batch_op.add_column(sa.Column("replaces", String(length=40), nullable=True))
        batch_op.add_column(sa.Column("replaced_by", String(length=40), nullable=True))
        batch_op.create_index("ix_device_name", ["name"])
    with op.batch_alter_table("registrationtoken", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replaces", String(length=40), nullable=True))
        batch_op.create_foreign_key(
            "fk_registrationtoken_replaces_device", "device", ["replaces"], ["id"]
        )
    op.create_table(
        "consolesession",
        sa.Column("id", String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf", String(length=64), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("expires_at", Stamp, nullable=False),
        sa.Column("last_seen_at", Stamp, nullable=False),
        sa.Column("remote_addr", String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_consolesession_user_id", "consolesession", ["user_id"])
    op.create_index("ix_consolesession_expires_at", "consolesession", ["expires_at"])
    op.create_table(
        "claim",
        sa.Column("id", String(length=40), nullable=False),
        sa.Column("secret_hash", String(length=64), nullable=False),
        sa.Column("code", String(length=16), nullable=False),
        sa.Column("csr_pem", sa.Text(), nullable=False),
        sa.Column("key_pin", String(length=80), nullable=False),
        sa.Column("inventory", sa.JSON(), nullable=False),
        sa.Column("serial", String(length=256), nullable=True),
        sa.Column("hardware_id", String(length=256), nullable=True),
        sa.Column("state", String(length=16), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("profile_id", sa.Integer(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("device_id", String(length=40), nullable=True),
        sa.Column("decided_by", String(length=128), nullable=True),
        sa.Column("decided_at", Stamp, nullable=True),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("expires_at", Stamp, nullable=False),
        sa.Column("remote_addr", String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"]),
        sa.ForeignKeyConstraint(["profile_id"], ["profile.id"]),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_claim_key_pin", "claim", ["key_pin"])
    op.create_index("ix_claim_state", "claim", ["state"])
    op.create_index("ix_claim_expires_at", "claim", ["expires_at"])


def downgrade() -> None:
    op.drop_table("claim")
    op.drop_table("consolesession")
    with op.batch_alter_table("registrationtoken", schema=None) as batch_op:
        batch_op.drop_constraint("fk_registrationtoken_replaces_device", type_="foreignkey")
        batch_op.drop_column("replaces")
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_index("ix_device_name")
        batch_op.drop_column("replaced_by")
        batch_op.drop_column("replaces")
        batch_op.drop_column("name")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_column("password_hash")
