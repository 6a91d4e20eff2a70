"""The QR claim shown by a device with no token (DESIGN.md "Device lifecycle", way 2).

The agent sends its CSR and inventory, gets a claim (id, secret, confirmation code and
the console page's URL) and shows it: a QR code of the URL on stderr in text blocks with
the code and URL under it, and ``claim.png`` (the symbol with the code drawn under it)
and ``claim.txt`` in the state folder, for a screen or a person at a shell. Then it
polls until a person approves (the answer is the enrolment, as a token's would be) or
rejects.

The claim is kept in ``claim.json`` (mode 0600: it holds the secret), so a restarted
agent polls the same claim and shows the same code. A secret the controller no longer
knows (the claim was asked for again) or an expired claim makes the agent ask again:
the same pending claim with a new secret, or a fresh claim with a new code, shown anew.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from edgefleet.agent.client import ControllerClient
from edgefleet.agent.files import atomic_write, read_json, write_json
from edgefleet.errors import Unauthorized
from edgefleet.wire import ClaimCreated, ClaimRequest, ClaimState, ClaimStatus, EnrolResponse

log = logging.getLogger("edgefleet.agent")

CLAIM_FILE = "claim.json"
CLAIM_PNG = "claim.png"
CLAIM_TXT = "claim.txt"
UNHELD_PAUSE_S = 5.0
"""Between polls of a controller that holds none (``claim_poll_seconds: 0``)."""
RENDER_TIMEOUT_S = 60.0
POLL_WAIT_S = 5.0
"""Longest poll the agent asks the controller to hold. A decision answers a held poll at
once whatever this is; it bounds how long a SIGTERM waits for the poll to return."""


class ClaimRejected(Exception):
    """A person rejected this device's claim; ``str()`` is the controller's message."""


@dataclass(frozen=True)
class StoredClaim:
    id: str
    secret: str
    code: str
    url: str
    expires_at: str
    poll_seconds: int
    controller_url: str


def load(state_dir: Path) -> StoredClaim | None:
    """The claim this agent is waiting on, if any (whichever controller it was made at)."""
    data = read_json(state_dir / CLAIM_FILE)
    if not isinstance(data, dict):
        return None
    try:
        return StoredClaim(**data)
    except TypeError:
        return None  # written by another version: ask again


def forget(state_dir: Path) -> None:
    for name in (CLAIM_FILE, CLAIM_PNG, CLAIM_TXT):
        with contextlib.suppress(FileNotFoundError):
            (state_dir / name).unlink()


class Claimer:
    """The device's side of one claim, across polls (and, through ``claim.json``,
    restarts)."""

    def __init__(self, state_dir: Path, controller_url: str, out: TextIO | None = None) -> None:
        self.state_dir = state_dir
        self.controller_url = controller_url
        self.out = out or sys.stderr
        self.claim = load(state_dir)
        if self.claim is not None and self.claim.controller_url != controller_url:
            self.claim = None  # made at another controller: worthless here
        self._shown: str | None = None

    @property
    def pause(self) -> float:
        """How long to wait before the next poll: none to speak of when the controller
        holds polls open (its hold is the wait)."""
        held = self.claim is None or self.claim.poll_seconds > 0
        return 0.05 if held else UNHELD_PAUSE_S

    def step(self, client: ControllerClient, request: ClaimRequest) -> EnrolResponse | None:
        """Create (or find again) the claim if needed, show it, poll once: the enrolment
        once approved, None while nobody has decided. Raises ClaimRejected."""
        if self.claim is None:
            self._create(client, request)
        assert self.claim is not None
        if self._shown != self.claim.id + self.claim.code:
            self.show()
        wait = min(float(self.claim.poll_seconds), POLL_WAIT_S)
        try:
            status = client.poll_claim(self.claim.id, self.claim.secret, wait)
        except Unauthorized as exc:
            if exc.code != "claim_secret":
                raise
            log.info(
                "claim %s: the controller no longer knows its secret; asking again", self.claim.id
            )
            self.claim = None
            return None
        return self._read(status)

    def _create(self, client: ControllerClient, request: ClaimRequest) -> None:
        made: ClaimCreated = client.create_claim(request)
        claim = StoredClaim(
            id=made.id,
            secret=made.secret,
            code=made.code,
            url=made.url,
            expires_at=made.expires_at.isoformat(timespec="seconds"),
            poll_seconds=made.poll_seconds,
            controller_url=self.controller_url,
        )
        write_json(self.state_dir / CLAIM_FILE, asdict(claim), mode=0o600)
        self.claim = claim

    def _read(self, status: ClaimStatus) -> EnrolResponse | None:
        assert self.claim is not None
        if status.state == ClaimState.approved and status.enrolment is not None:
            log.info("claim %s approved", self.claim.id)
            return status.enrolment
        if status.state == ClaimState.rejected:
            raise ClaimRejected(f"claim {self.claim.id}: {status.message}")
        if status.state == ClaimState.expired:
            log.warning(
                "claim %s expired before anyone approved it; making a new one", self.claim.id
            )
            forget(self.state_dir)
            self.claim = None
        return None

    def show(self) -> None:
        """The QR code on stderr, and claim.png / claim.txt in the state folder."""
        claim = self.claim
        assert claim is not None
        atomic_write(
            self.state_dir / CLAIM_TXT,
            f"code: {claim.code}\nurl: {claim.url}\nexpires_at: {claim.expires_at}\n",
        )
        lines = [
            "",
            f"This device waits to be added to the fleet (claim {claim.id}).",
            "",
            render(claim.url, claim.code, self.state_dir / CLAIM_PNG),
            "",
            f"  Confirmation code: {claim.code}",
            f"  Scan the QR code, or open {claim.url}",
            f"  and check that the page shows the confirmation code {claim.code}.",
            f"  This claim expires at {claim.expires_at}.",
            "",
        ]
        print("\n".join(lines), file=self.out, flush=True)
        log.info(
            "claim %s waiting for a person: code %s at %s (also %s)",
            claim.id,
            claim.code,
            claim.url,
            self.state_dir / CLAIM_PNG,
        )
        self._shown = claim.id + claim.code


def render(url: str, code: str, png: Path) -> str:
    """Write ``png`` and return the terminal rendering, in a child process
    (``agent/qrimage.py``) so the QR encoder never stays in the daemon's memory; without
    it the device still shows the URL and code."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "edgefleet.agent.qrimage", url, code, str(png)],
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot draw the claim's QR code: %s", exc)
        return "  (no QR code: open the URL below)"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("cannot draw the claim's QR code (%s); is qrcode installed?", why)
        return "  (no QR code: open the URL below)"
    return done.stdout.rstrip("\n")
