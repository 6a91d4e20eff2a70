"""Device assertions are standard ES256 JWTs: PyJWT (the controller's verifier) reads
them, refuses a tampered one, and every signature has the fixed 64-byte form."""

from __future__ import annotations

import base64

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.signing import make_assertion


def test_pyjwt_verifies_the_agents_assertions_and_refuses_a_tampered_one() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for _ in range(200):  # some r and s have leading zero bytes: still 32 bytes each
        token = make_assertion(key, "dev-1", "ctl-1", now=1_900_000_000.0, csr_sha256="ab")
        claims = jwt.decode(
            token,
            key.public_key(),
            algorithms=["ES256"],
            audience="ctl-1",
            options={"verify_exp": False, "verify_iat": False},
        )
        assert (claims["iss"], claims["sub"], claims["csr_sha256"]) == ("dev-1", "dev-1", "ab")
        signature = token.rsplit(".", 1)[1]
        assert len(base64.urlsafe_b64decode(signature + "==")) == 64
    head, body, signature = token.split(".")
    forged = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            f"{head}.{forged}.{signature}",
            key.public_key(),
            algorithms=["ES256"],
            audience="ctl-1",
            options={"verify_exp": False, "verify_iat": False},
        )
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            token, other, algorithms=["ES256"], audience="ctl-1", options={"verify_exp": False}
        )
