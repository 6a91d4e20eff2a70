"""One-time set-up of a data directory, run by one process before any worker starts:
schema migrations, the PKI, the access-token key, the controller id, the first admin."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from edgefleet.controller.access import load_or_create_key
from edgefleet.controller.db import make_engine, migrate
from edgefleet.controller.pki.authority import load_or_create_authority
from edgefleet.controller.pki.registry_key import load_or_create_token_key
from edgefleet.controller.services.users import bootstrap_admin
from edgefleet.controller.settings import Settings


@dataclass
class Prepared:
    controller_id: str
    root_pin: str
    new_admin_token: str | None
    """Set only the first time, when no token came from the environment: print it once."""
    new_admin_password: str | None = None
    """The first admin's console password, likewise."""


def prepare(settings: Settings) -> Prepared:
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(settings.effective_database_url)
    try:
        migrate(engine)
        passphrase = settings.key_passphrase_bytes()
        authority = load_or_create_authority(data / "pki", settings.server_names, passphrase)
        load_or_create_key(data)
        load_or_create_token_key(data / "pki", passphrase)
        id_file = data / "controller-id"
        if settings.controller_id is None and not id_file.exists():
            id_file.write_text(f"edgefleet-{secrets.token_hex(6)}\n")
        controller_id = settings.controller_id or id_file.read_text().strip()
        first = bootstrap_admin(
            engine, settings.bootstrap_admin_token, settings.bootstrap_admin_password
        )
    finally:
        engine.dispose()
    return Prepared(controller_id, authority.root_pin, first.token, first.password)
