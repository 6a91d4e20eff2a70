"""An in-process controller (the real app over TestClient) with the few steps most API
tests need: sites, tokens, operators of each role, and devices that really enrol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from edgefleet.signing import make_assertion

API = "/api/v1"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_for(key: Any, cn: str = "device") -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class TestDevice:
    __test__ = False  # a helper, not a test class

    id: str
    key: ec.EllipticCurvePrivateKey
    access_token: str = ""
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}


class Api:
    """Wraps a TestClient; ``admin`` is the bootstrap admin's token."""

    __test__ = False

    def __init__(self, client: TestClient, admin_token: str, controller_id: str) -> None:
        self.client = client
        self.admin = admin_token
        self.controller_id = controller_id

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if token is not None:
            headers.update(self.auth(token))
        return self.client.request(method, API + path, headers=headers, **kw)

    def ok(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        r = self.call(method, path, token, **kw)
        assert r.status_code < 300, (r.status_code, r.text)
        return r.json()

    def site(self, name: str = "shop-1", tz: str = "UTC") -> dict[str, Any]:
        return self.ok("POST", "/sites", self.admin, json={"name": name, "timezone": tz})

    def profile(self, name: str = "retail", spec: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.ok("POST", "/profiles", self.admin, json={"name": name, "spec": spec or {}})

    def token(self, site: str = "shop-1", **kw: Any) -> dict[str, Any]:
        return self.ok("POST", "/tokens", self.admin, json={"site": site, **kw})

    def user(self, username: str, role: str, site: str | None = None) -> str:
        body = {"username": username, "role": role, "site": site}
        return self.ok("POST", "/users", self.admin, json=body)["api_token"]

    def enrol(self, token: str, key: Any = None, **inventory: Any) -> Any:
        key = key or new_key()
        return self.call(
            "POST", "/enrol", json={"token": token, "csr": csr_for(key), "inventory": inventory}
        )

    def device(self, token: str, **inventory: Any) -> TestDevice:
        """An enrolled device holding an access token."""
        key = new_key()
        r = self.enrol(token, key, **inventory)
        assert r.status_code == 200, r.text
        dev = TestDevice(r.json()["device_id"], key, response=r.json())
        self.login(dev)
        return dev

    def assertion(self, dev: TestDevice, **kw: Any) -> str:
        return make_assertion(
            kw.pop("key", dev.key),
            kw.pop("device_id", dev.id),
            kw.pop("aud", self.controller_id),
            **kw,
        )

    def login(self, dev: TestDevice) -> None:
        r = self.call("POST", "/auth/token", json={"client_assertion": self.assertion(dev)})
        assert r.status_code == 200, r.text
        dev.access_token = r.json()["access_token"]
