"""The operator's HTTP client: one place that talks to the controller and turns its
answers into data or an ``edgefleet.errors`` exception carrying the controller's words."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from edgefleet.cli.config import CliConfig
from edgefleet.errors import ApiError, EdgefleetError, from_response_body
from edgefleet.wire import API_PREFIX


class Controller:
    def __init__(self, cfg: CliConfig, transport: httpx.BaseTransport | None = None) -> None:
        verify: ssl.SSLContext | bool = True
        if cfg.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(cfg.ca_file))
        headers = {"authorization": f"Bearer {cfg.token}"} if cfg.token else {}
        self._http = httpx.Client(
            base_url=cfg.url + API_PREFIX,
            headers=headers,
            verify=verify,
            timeout=30,
            transport=transport,
        )

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise EdgefleetError(
                f"cannot reach the controller at {self._http.base_url}: {exc}", code="unreachable"
            ) from exc
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = None
            raise from_response_body(r.status_code, body)
        return r.json() if r.content else None

    def text(self, path: str) -> str:
        """A plain-text answer (a PEM bundle), with the same error handling."""
        try:
            r = self._http.get(path)
        except httpx.HTTPError as exc:
            raise EdgefleetError(
                f"cannot reach the controller at {self._http.base_url}: {exc}", code="unreachable"
            ) from exc
        if r.status_code >= 400:
            raise from_response_body(r.status_code, None)
        return r.text

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)


__all__ = ["ApiError", "Controller"]
