"""The simulator's operator calls: prove the token works, make the site if it is
missing, create the run's registration token (one use per device) and revoke it after.

Failures here are ConfigError with what to do about it: nothing has been enrolled yet,
and the token is checked before anything is created."""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import quote

import aiohttp

from edgefleet.errors import ConfigError
from edgefleet.wire import API_PREFIX

SETUP_TIMEOUT_S = 30.0


class Operator:
    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}

    async def _call(
        self, method: str, path: str, body: Any = None, timeout: float = SETUP_TIMEOUT_S
    ) -> tuple[int, Any]:
        try:
            async with self.session.request(
                method,
                self.url + API_PREFIX + path,
                json=body,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as r:
                text = await r.text()
                status = r.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ConfigError(
                f"the controller at {self.url} failed TLS verification ({exc.certificate_error})"
                "; pass its root certificate with --ca-file or EDGEFLEET_CA_FILE"
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the controller at {self.url}: {type(exc).__name__}: {exc}"
                "; check --url (EDGEFLEET_URL) and that it is running"
            ) from exc
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = None
        return status, payload

    @staticmethod
    def _message(payload: Any) -> str:
        try:
            return str(payload["error"]["message"])
        except (TypeError, KeyError):
            return str(payload)[:200]

    async def check(self, profile: str | None = None) -> None:
        """The token is an operator's, and the profile (if any) exists: checked before
        the site or the token is created."""
        status, payload = await self._call("GET", "/sites")
        if status == 401:
            raise ConfigError(
                f"the controller refused the operator token ({self._message(payload)}); pass "
                "a valid operator or admin API token with --token or EDGEFLEET_TOKEN"
            )
        if status != 200:
            raise ConfigError(
                f"GET /sites answered {status}: {self._message(payload)}; is {self.url} an "
                "Edgefleet controller?"
            )
        self.sites = {s["name"] for s in payload}
        if profile is not None:
            status, payload = await self._call("GET", f"/profiles/{quote(profile, safe='')}")
            if status != 200:
                raise ConfigError(
                    f"--profile {profile!r}: {self._message(payload)} (create it first with "
                    "`edgefleet profiles apply`, or leave --profile out)"
                )

    async def registration_token(
        self, site: str, uses: int, profile: str | None = None
    ) -> dict[str, Any]:
        """A token for ``uses`` devices at ``site`` (made if missing), no approval needed:
        the answer carries the registration file (controller id, pins, secret)."""
        if site not in self.sites:
            status, payload = await self._call("POST", "/sites", {"name": site})
            if status not in (200, 201, 409):
                raise ConfigError(
                    f"cannot create site {site!r}: {status} {self._message(payload)} (an "
                    "operator or admin token can; or pass an existing site with --site)"
                )
        status, payload = await self._call(
            "POST",
            "/tokens",
            {
                "site": site,
                "profile": profile,
                "max_uses": uses,
                "require_approval": False,
                "expires_in_seconds": 86400,
                "description": f"edgefleet simulate: {uses} simulated devices",
                "labels": {"simulated": "true"},
            },
        )
        if status != 201:
            raise ConfigError(
                f"cannot create a registration token: {status} {self._message(payload)} "
                "(the operator token needs the operator or admin role)"
            )
        return payload

    async def revoke(self, kid: str, timeout: float) -> None:
        """Best effort, within a request's timeout (the controller may be gone): the
        token's uses are spent anyway; revoking makes that plain in the token list."""
        with contextlib.suppress(ConfigError):
            await self._call("POST", f"/tokens/{kid}/revoke", timeout=timeout)

    async def healthy(self, timeout: float) -> bool:
        """``GET /healthz`` answered 200 within ``timeout``: the controller still serves."""
        try:
            async with self.session.get(
                self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as r:
                await r.read()
                return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
