"""QR enrolment codes: the short code a controller redeems, and the payload a label carries.

Shared by the controller (which makes payloads) and the agent (which reads them), so the
format exists once::

    HTTPS://FLEET.EXAMPLE.COM:8443/E/7KQ2M9XD4T#<pin>[.<pin>...]

Every character but ``#`` is in the QR code's alphanumeric set (``0-9 A-Z $%*+-./:``
and space), which packs 5.5 bits a character instead of byte mode's 8; that keeps a
typical label at version 5 (37 x 37 modules) at error correction M, where the same
URL in lower case with a base64url pin needs version 6. Hence:

- scheme and host in upper case (both are case-insensitive, RFC 3986 §3.1, §3.2.2);
  a path prefix of the public URL is kept as it is;
- the route ``/E/`` and a code of 10 characters from Crockford's base32 (digits and
  capitals without I, L, O, U: nothing to mistake when read off a label), 50 bits,
  stored by the controller only as a hash;
- root pins (SHA-256 of the root's SubjectPublicKeyInfo, as in the registration
  file's ``sha256:<hex>``) as unpadded RFC 4648 base32: 52 characters, which in
  alphanumeric mode cost less than base64url's 43 in byte mode. Several pins are
  separated by ``.``. They travel in the fragment, which a browser never sends to a
  server, and the agent takes pins only from here, never from the network.

The agent presents the code at ``POST /api/v1/enrol`` as ``efq.<CODE>`` (a
registration token reads ``efr.<kid>.<secret>``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgefleet.errors import ConfigError, TrustError
from edgefleet.signing import PIN_PREFIX, check_pin_format

CODE_PREFIX = "efq"
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford's base32: 32 symbols, so 10 characters carry 50 bits."""
CODE_LENGTH = 10
ROUTE = "/E/"
PIN_SEPARATOR = "."
_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1", "-": None, " ": None})


def normalise_code(text: str) -> str | None:
    """The canonical code (upper case, look-alikes mapped, hyphens dropped), else None."""
    code = text.strip().upper().translate(_CONFUSABLE)
    if len(code) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in code):
        return None
    return code


def code_credential(code: str) -> str:
    """What the agent sends as ``token`` in its enrol request."""
    return f"{CODE_PREFIX}.{code}"


def parse_code_credential(value: str) -> str | None:
    """The code in an ``efq.<CODE>`` credential; None if ``value`` is not one (or malformed)."""
    prefix, dot, rest = value.strip().partition(".")
    if prefix != CODE_PREFIX or not dot:
        return None
    return normalise_code(rest)


def is_code_credential(value: str) -> bool:
    return value.strip().startswith(CODE_PREFIX + ".")


def encode_pin(pin: str) -> str:
    """``sha256:<hex>`` -> 52 characters of unpadded base32."""
    raw = bytes.fromhex(check_pin_format(pin).removeprefix(PIN_PREFIX))
    return base64.b32encode(raw).decode().rstrip("=")


def decode_pin(text: str) -> str:
    """A pin as a label or a person writes it -> ``sha256:<hex>``.

    Accepted: 52 characters of base32 (what labels carry), 43 of base64url, or
    kubeadm's ``sha256:<hex>``. Raises TrustError saying what is wrong.
    """
    t = text.strip()
    if t.lower().startswith(PIN_PREFIX):
        return check_pin_format(t)
    try:
        if len(t) == 52:
            raw = base64.b32decode(t.upper() + "====")
        elif len(t) == 43:
            if not re.fullmatch(r"[A-Za-z0-9_-]{43}", t):
                raise ValueError("not base64url")
            raw = base64.urlsafe_b64decode(t + "=")
        else:
            raise ValueError(f"{len(t)} characters")
    except (ValueError, binascii.Error) as exc:
        raise TrustError(
            f"pin {t!r} is neither 52 characters of base32, 43 of base64url nor "
            f"sha256:<64 hex digits> ({exc})"
        ) from exc
    if len(raw) != 32:
        raise TrustError(f"pin {t!r} is not a SHA-256 (it decodes to {len(raw)} bytes)")
    return PIN_PREFIX + raw.hex()


def build_payload(controller_url: str, code: str, pins: list[str]) -> str:
    """The text a QR label carries (see the module docstring)."""
    parts = urlsplit(controller_url.rstrip("/"))
    if parts.scheme != "https" or not parts.netloc:
        raise ConfigError(f"the controller URL {controller_url!r} must be https://HOST[:PORT]")
    if not pins:
        raise ConfigError("a QR payload needs at least one root pin")
    base = f"HTTPS://{parts.netloc.upper()}{parts.path}"
    return f"{base}{ROUTE}{code}#" + PIN_SEPARATOR.join(encode_pin(p) for p in pins)


@dataclass(frozen=True)
class QrPayload:
    controller_url: str
    """``https://host[:port][/prefix]``, lower-case scheme and host."""
    code: str
    root_pins: list[str]
    """``sha256:<hex>``, as the registration file holds them."""

    @property
    def credential(self) -> str:
        return code_credential(self.code)


def parse_payload(text: str) -> QrPayload:
    """Read a scanned payload; every problem raises ConfigError naming the part to fix.

    Never echoes the code back: it is the secret part of the payload.
    """
    shown = "the QR payload"
    raw = text.strip()
    url, hash_, fragment = raw.partition("#")
    if not hash_ or not fragment:
        raise ConfigError(
            f"{shown} has no root pin after '#': it should read "
            "HTTPS://HOST:PORT/E/CODE#PIN (scan the label again, all of it)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError as exc:
        # Not the parser's words: they quote the port, which may be the code itself.
        raise ConfigError(f"{shown} does not start with a valid URL (its host or port)") from exc
    if parts.scheme.lower() != "https" or not parts.hostname:
        got = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ConfigError(f"{shown} must start with https://HOST (got {got})")
    if parts.query or parts.username or parts.password:
        raise ConfigError(f"{shown} may have no user, password or query in its URL")
    prefix, sep, code_text = parts.path.rpartition("/")
    if not sep or not prefix.upper().endswith(ROUTE.rstrip("/")):
        raise ConfigError(f"{shown}'s URL must end in {ROUTE}CODE")
    code = normalise_code(code_text)
    if code is None:
        raise ConfigError(
            f"{shown}'s code is not {CODE_LENGTH} characters of {CODE_ALPHABET} "
            "(a misread or tampered label?)"
        )
    pins: list[str] = []
    for piece in fragment.split(PIN_SEPARATOR):
        try:
            pins.append(decode_pin(piece))
        except TrustError as exc:
            raise ConfigError(f"{shown}'s root pin: {exc.message}") from exc
    if len(pins) > 8:
        raise ConfigError(f"{shown} has {len(pins)} root pins; at most 8")
    netloc = parts.netloc.lower()
    base_path = prefix[: -len(ROUTE.rstrip("/"))]
    return QrPayload(f"https://{netloc}{base_path}".rstrip("/"), code, pins)
