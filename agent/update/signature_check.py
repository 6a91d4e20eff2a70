"""Refuse a model no trusted key signed, before anything of it is downloaded or staged.

When the profile's ``model_signatures.required`` is set, every model of a revision must
carry, under its ``sha256-<hex>.sig`` tag, a signature by one of the profile's keys over
the exact manifest digest the device is about to install (``edgefleet.models.signing``).
Each source is asked in the order blobs are pulled (mirrors, then the registry): a
mirror that lags behind the registry's signatures does not refuse a model the registry
vouches for, and a forged signature fails on every source alike. A refusal raises
``SignatureRefused``: the staging state turns it into a failed attempt whose reason
reaches the controller in the update report, and no slot is touched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edgefleet.models import signature_store, signing
from edgefleet.models.signing import SignatureRefused, TrustedKey
from edgefleet.oci import reference as refs
from edgefleet.oci.errors import OciError
from edgefleet.wire import ModelRef, ModelSignaturePolicy

if TYPE_CHECKING:
    from edgefleet.agent.oci.pull import Puller

log = logging.getLogger("edgefleet.agent")


def required_keys(policy: dict[str, Any] | None) -> list[TrustedKey] | None:
    """The keys to verify with, or None when the profile requires no signature."""
    if not policy:
        return None
    parsed = ModelSignaturePolicy.model_validate(policy)
    if not parsed.required:
        return None
    if not parsed.keys:
        raise SignatureRefused(
            "the profile requires model signatures but lists no key: every model is refused"
        )
    return signing.trusted_keys([k.model_dump() for k in parsed.keys])


def check(puller: Puller, model: ModelRef, keys: list[TrustedKey]) -> TrustedKey:
    """The key that signed ``model``'s manifest digest; SignatureRefused with every
    source's reason otherwise."""
    ref = refs.parse(model.reference)
    if ref.digest is None:
        raise SignatureRefused(f"model {model.name}: {model.reference} is not pinned by digest")
    reasons = []
    for source in puller.sources(ref, model.origin or None):
        try:
            key = signature_store.verify(source.client, source.repository, ref.digest, keys)
        except SignatureRefused as exc:
            reasons.append(f"{source.label}: {exc.message}")
            continue
        except OciError as exc:
            reasons.append(f"{source.label}: reading its signatures failed: {exc.message}")
            continue
        log.info("model %s (%s) is signed by key %s", model.name, ref.digest, key.id)
        return key
    raise SignatureRefused(
        f"model {model.name} ({model.reference}) refused, signatures are required: "
        + "; ".join(reasons)
    )
