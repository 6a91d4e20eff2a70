"""Sends the result buffer to the controller: in sequence order, in batches by count
and bytes, gzipped, declaring the sequences it will never send; deletes only what the
controller acked (the remote ack, see DESIGN.md "Offline buffer").

Where it stopped is the controller's ack, kept in the buffer with the delete, so a
restarted agent resumes there. A lost answer only means records are sent again, and
the controller counts them as duplicates. A controller that answers with an ack behind
what this buffer already deleted (its database was restored) is told the missing
sequences are gone (reason ``acked``), and the upload goes on.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.agent.backoff import Backoff
from edgefleet.errors import ApiError, EdgefleetError
from edgefleet.wire import ResultAck, ResultPolicy

if TYPE_CHECKING:
    # Imported when the buffer is first opened: an agent with no results to send keeps
    # SQLite out of its idle memory.
    from edgefleet.agent.buffer import Buffer, RawRow, Stats

log = logging.getLogger("edgefleet.agent.uploader")

BATCH_RECORDS = 1000
BATCH_BYTES = 512 * 1024
"""Raw bytes per batch (payloads and per-row overhead) before JSON and gzip: well
inside the controller's 4 MiB unpacked limit."""
POLL_SECONDS = 2.0
"""How often an empty buffer is looked at again."""
GZIP_LEVEL = 6
EVICTED = "evicted"
ACKED = "acked"

Post = Callable[[Callable[[], bytes]], ResultAck]
"""Sends one gzipped batch (built anew per attempt) and returns the controller's ack."""


class UploadError(EdgefleetError):
    default_code = "upload_failed"


class Uploader:
    """Drains one buffer file; :meth:`run` is the thread's loop, :meth:`step` one batch."""

    def __init__(
        self,
        path: Path,
        post: Post,
        *,
        backoff: Backoff | None = None,
        batch_records: int = BATCH_RECORDS,
        batch_bytes: int = BATCH_BYTES,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.path = path
        self.post = post
        self.backoff = backoff or Backoff(1.0, 300.0)
        self.batch_records = batch_records
        self.batch_bytes = batch_bytes
        self.poll_seconds = poll_seconds
        self._buffer: Buffer | None = None
        self._lock = threading.Lock()  # the buffer's opening and closing
        self._cursor = 0
        """The controller's ack, as far as this uploader knows."""
        self._epoch = ""
        self._policy: ResultPolicy | None = None
        self._applied: ResultPolicy | None = None
        self._wake = threading.Event()
        self.failing = False
        """The last try failed: the thread is backing off."""

    def wake(self) -> None:
        """Try now: the agent just reached the controller (or is stopping), so a backoff
        of minutes after a long outage need not run out first."""
        self._wake.set()

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def configure(self, policy: ResultPolicy) -> None:
        """The profile's capacity and eviction policy, applied to the buffer at once."""
        self._policy = policy
        with self._lock:
            self._apply_policy()

    @property
    def policy(self) -> ResultPolicy | None:
        """The profile's capacity and policy, once the desired state named them."""
        return self._policy

    def stats(self) -> Stats | None:
        """The buffer's depth, size, oldest age and drops; None before it exists."""
        with self._lock:
            return self._buffer.stats() if self._buffer is not None else None

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` (then :meth:`wake` it): send while there is a backlog, else
        look again every poll."""
        try:
            while not stop.is_set():
                try:
                    busy = self.step()
                except EdgefleetError as exc:
                    retry_after = exc.retry_after if isinstance(exc, ApiError) else None
                    delay = self.backoff.next_delay(retry_after)
                    log.warning(
                        "result upload failed (%s: %s); retrying in %.1fs",
                        exc.code,
                        exc.message,
                        delay,
                    )
                    # A Retry-After is the controller's own word (a database or disk
                    # outage, overload): the main loop reaching it must not cut it short.
                    self._fail(delay, wakeable=retry_after is None)
                    continue
                except Exception:
                    # The buffer's storage (disk full, file replaced) or a bug: results
                    # stay in the buffer, so log it and try again rather than stop sending.
                    self.close()
                    delay = self.backoff.next_delay()
                    log.exception("result upload failed; retrying in %.1fs", delay)
                    self._fail(delay)
                    continue
                self.failing = False
                self.backoff.reset()
                if not busy:
                    self._sleep(self.poll_seconds)
        finally:
            self.close()

    def _fail(self, delay: float, wakeable: bool = True) -> None:
        self.failing = wakeable
        self._sleep(delay)

    def step(self) -> bool:
        """Send one batch; False when there was nothing to send."""
        buffer = self._open()
        rows = buffer.read_raw(self._cursor + 1, self.batch_records, self.batch_bytes)
        if not rows:
            return False
        local_ack = buffer.acked
        skipped = _skipped(self._cursor, rows, local_ack)
        epoch = buffer.epoch
        ack = self.post(lambda: _encode(epoch, rows, skipped))
        if ack.epoch != epoch:
            raise UploadError(
                f"the controller acked buffer epoch {ack.epoch} for a batch of epoch {epoch}"
            )
        if ack.refused:
            log.error(
                "the controller refused %d result(s) of epoch %s (first seq %d): it already "
                "holds their keys with other payloads and kept these aside",
                len(ack.refused),
                epoch,
                ack.refused[0],
            )
        last = rows[-1][0]
        if ack.acked < last and ack.acked >= self._cursor:
            raise UploadError(
                f"the controller acked up to {ack.acked} for a batch up to {last}; "
                "sending it again later"
            )
        # Behind what was sent (and possibly what was deleted): resend from its ack.
        self._cursor = ack.acked
        if ack.acked > local_ack:
            buffer.delete_through(ack.acked)
        return True

    def close(self) -> None:
        with self._lock:
            if self._buffer is not None:
                self._buffer.close()
                self._buffer = None

    def _open(self) -> Buffer:
        """The buffer, created if need be, and opened again if it was replaced (the
        storage was wiped): a new file is a new epoch, sent from its start."""
        if self._buffer is not None and not self.path.exists():
            self.close()
        with self._lock:
            if self._buffer is None:
                from edgefleet.agent.buffer import Buffer

                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._buffer = Buffer(self.path)
                # Reopened after a failure (a delete on a full disk): the controller's ack
                # still holds; a new file (a new epoch) starts from its own.
                same = self._buffer.epoch == self._epoch
                self._cursor = max(self._cursor if same else 0, self._buffer.acked)
                self._epoch = self._buffer.epoch
                self._applied = None
            self._apply_policy()
            return self._buffer

    def _apply_policy(self) -> None:
        policy = self._policy
        if self._buffer is None or policy is None or policy == self._applied:
            return
        from edgefleet.agent.buffer import Policy

        self._buffer.configure(
            policy.max_bytes, Policy.of_profile(policy.policy), policy.rate_per_second
        )
        self._applied = policy


def _skipped(cursor: int, rows: list[RawRow], local_ack: int) -> list[dict[str, object]]:
    """Sequences between the cursor and the rows, and between rows, that are gone:
    deleted after an ack (up to ``local_ack``) or evicted."""
    out: list[dict[str, object]] = []
    expected = cursor + 1
    for row in rows:
        seq = row[0]
        if seq > expected:
            if expected <= local_ack:
                out.append({"first": expected, "last": min(seq - 1, local_ack), "reason": ACKED})
            if seq - 1 > local_ack:
                first = max(expected, local_ack + 1)
                out.append({"first": first, "last": seq - 1, "reason": EVICTED})
        expected = seq + 1
    return out


def _encode(epoch: str, rows: list[RawRow], skipped: list[dict[str, object]]) -> bytes:
    """The batch as gzipped JSON, with the clocks as of now (the controller dates the
    boot by them). Written piece by piece into the compressor: a batch never exists as
    a tree of dicts, which keeps the agent's peak memory down while it drains."""
    from edgefleet.agent.buffer import boot_id, monotonic

    out = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    head = {"epoch": epoch, "boot_id": boot_id(), "wall": time.time(), "mono": monotonic()}
    parts = [json.dumps(head, separators=(",", ":"))[:-1], ',"skipped":', _dumps(skipped)]
    parts.append(',"records":[')
    chunks = [out.compress("".join(parts).encode())]
    for i, (seq, wall, mono, boot, digest, slot, revision, _size, payload) in enumerate(rows):
        binary = isinstance(payload, bytes)
        text = base64.b64encode(payload).decode() if binary else payload
        piece = (
            f'{"," if i else ""}{{"seq":{seq},"wall":{wall!r},"mono":{mono!r},'
            f'"boot_id":{_dumps(boot)},"digest":{_dumps(digest)},"slot":{_dumps(slot)},'
            f'"revision":{_dumps(revision)},"encoding":"{"base64" if binary else "json"}",'
            f'"payload":{_dumps(text)}}}'
        )
        chunks.append(out.compress(piece.encode()))
    chunks.append(out.compress(b"]}"))
    chunks.append(out.flush())
    return b"".join(chunks)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
