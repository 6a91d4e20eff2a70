"""``python -m edgefleet.agent.runner``: serve one ONNX model until SIGTERM.

Exit codes: 0 stopped (SIGTERM, SIGINT, or standard input closed with
``--watch-stdin``); 2 the model, socket, port or results folder cannot be used
(the last line of standard error says why); 1 anything else.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
import signal
import socketserver
import sqlite3
import sys
import threading
import time
from pathlib import Path

from edgefleet.agent.drift_windows import DriftWindows
from edgefleet.agent.results import BufferStore
from edgefleet.agent.runner import model, server
from edgefleet.agent.runner.drift import DriftMonitor
from edgefleet.errors import ConfigError

log = logging.getLogger("edgefleet.runner")

EXIT_OK = 0
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edgefleet.agent.runner",
        description="Serve one ONNX model on a local HTTP API: POST /predict, GET /health, "
        "GET /model. Started and watched by the Edgefleet agent.",
    )
    p.add_argument("--model", type=Path, required=True, help="the .onnx file")
    p.add_argument("--socket", type=Path, required=True, help="Unix socket to serve on")
    p.add_argument("--port", type=int, help="also serve on this 127.0.0.1 port (0: any free port)")
    p.add_argument(
        "--results", type=Path, required=True, help="result store folder (one record per call)"
    )
    p.add_argument("--name", help="model name reported with every answer (default: file stem)")
    p.add_argument("--version", default="", help="model version reported with every answer")
    p.add_argument("--digest", help="refuse to serve unless the file's digest is this sha256:<hex>")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime compute threads (default 1)")
    p.add_argument("--slot", choices=["A", "B"], help="the A/B slot the model came from")
    p.add_argument("--revision", type=int, help="the profile revision the model came from")
    p.add_argument(
        "--drift-reference",
        type=Path,
        help="sketch live inputs and outputs against this drift reference, writing each "
        "closed window to the results folder's drift.db",
    )
    p.add_argument("--drift-window", type=float, default=3600.0, help="seconds (default 3600)")
    p.add_argument(
        "--drift-sample-rate", type=float, default=1.0, help="share of inferences counted"
    )
    p.add_argument("--artifact", default="", help="the model's pinned OCI reference")
    p.add_argument(
        "--shadow-model",
        type=Path,
        help="run this candidate .onnx in shadow on a sample of the live inputs, after each "
        "answer, writing agreement windows to the results folder's shadow.db",
    )
    p.add_argument("--shadow-digest", help="refuse the candidate unless its file has this digest")
    p.add_argument("--shadow-key", default="", help="what asked for the comparison (rollout-7)")
    p.add_argument("--shadow-reference", default="", help="the candidate's pinned OCI reference")
    p.add_argument(
        "--shadow-sample-rate", type=float, default=1.0, help="share of inferences compared"
    )
    p.add_argument("--shadow-window", type=float, default=300.0, help="seconds (default 300)")
    p.add_argument(
        "--take-over",
        action="store_true",
        help="replace a runner serving the socket (bind beside it, rename over it): "
        "the supervisor starts the new runner first and stops the old one after",
    )
    p.add_argument(
        "--watch-stdin",
        action="store_true",
        help="exit when standard input closes: the supervisor holds the other end, "
        "so the runner never outlives the agent",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s runner: %(message)s",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.watch_stdin:
        threading.Thread(target=_set_at_eof, args=(stop,), daemon=True).start()
    started = time.perf_counter()
    servers: list[socketserver.BaseServer] = []
    unix: server.UnixServer | None = None
    try:
        loaded = model.load(
            args.model, args.name or args.model.stem, args.version, args.digest, args.threads
        )
        service = server.Service(
            loaded, _store(args.results, args.slot, args.revision), drift=_drift(args, loaded)
        )
        unix = server.bind_unix(args.socket, service, args.take_over)
        servers.append(unix)
        if args.port is not None:
            servers.append(server.bind_tcp(args.port, service))
    except (model.ModelError, server.SetupError) as exc:
        log.error("%s", exc)
        if unix is not None:  # the socket is ours: leave no listener behind
            unix.server_close()
            server.release(args.socket, unix)
        return EXIT_CONFIG
    _release_free_memory()
    if service.drift is not None:
        service.drift.start()
    if args.shadow_model is not None:
        # after the socket serves: loading the candidate does not delay the takeover
        threading.Thread(target=_attach_shadow, args=(args, service), daemon=True).start()
    with server.serving(servers, args.socket):
        log.info(
            "serving %s (%s) from %s in %.0f ms on %s%s",
            loaded.ref["name"],
            loaded.ref["digest"],
            args.model,
            (time.perf_counter() - started) * 1000,
            args.socket,
            f" and 127.0.0.1:{service.port}" if service.port is not None else "",
        )
        stop.wait()
    if service.shadow is not None:  # no call comes any more: store its open windows
        service.shadow.stop()
    log.info("stopped")
    return EXIT_OK


def _release_free_memory() -> None:
    """Hand the load's transient copies (the file, the parsed protobuf: about twice the
    model's size) back to the system: glibc keeps freed memory otherwise, and a small
    device counts resident memory. Elsewhere (musl, macOS) this does nothing."""
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


def _store(folder: Path, slot: str | None, revision: int | None) -> BufferStore:
    try:
        return BufferStore(folder, slot, revision)
    except (OSError, sqlite3.Error) as exc:
        raise server.SetupError(
            f"cannot use the results folder {folder}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc


def _drift(args: argparse.Namespace, loaded: model.Model) -> DriftMonitor | None:
    """The drift monitor the arguments ask for; None (logged) when its reference cannot
    be used: the model serves without it rather than not at all."""
    if args.drift_reference is None:
        return None
    try:
        store = DriftWindows(args.results)
        return DriftMonitor(
            args.drift_reference,
            loaded.ref,
            store,
            window_seconds=args.drift_window,
            sample_rate=args.drift_sample_rate,
            artifact=args.artifact,
            input_names=[spec["name"] for spec in loaded.inputs],
        )
    except (ConfigError, OSError, sqlite3.Error) as exc:
        log.error("serving %s without drift monitoring: %s", loaded.ref["name"], exc)
        return None


def _attach_shadow(args: argparse.Namespace, service: server.Service) -> None:
    """Load the candidate and start comparing; a candidate that cannot run is refused
    with one log line (and in ``/health``), and the active model serves on alone."""
    from edgefleet.agent.runner.api import ShadowHealth
    from edgefleet.agent.runner.shadow import Shadow
    from edgefleet.agent.shadow_windows import ShadowWindows

    active = service.model
    reference = args.shadow_reference
    candidate_digest = reference.rsplit("@", 1)[-1] if "@" in reference else args.shadow_digest
    try:
        candidate = model.load(
            args.shadow_model, active.ref["name"], "", args.shadow_digest, args.threads
        )
        shadow = Shadow(
            active,
            candidate,
            ShadowWindows(args.results),
            key=args.shadow_key,
            active_digest=args.artifact.rsplit("@", 1)[-1]
            if "@" in args.artifact
            else active.ref["digest"],
            candidate_digest=candidate_digest or candidate.ref["digest"],
            sample_rate=args.shadow_sample_rate,
            window_seconds=args.shadow_window,
        )
    except (model.ModelError, ConfigError, OSError, sqlite3.Error) as exc:
        log.error(
            "serving %s without its shadow candidate %s: %s",
            active.ref["name"],
            args.shadow_key,
            exc,
        )
        service.shadow_refused = ShadowHealth(
            key=args.shadow_key,
            digest=candidate_digest or "",
            running=False,
            reason=str(exc),
            compared=0,
            skipped=0,
            errors=0,
        )
        return
    _release_free_memory()
    shadow.start()
    service.shadow = shadow
    log.info(
        "shadow candidate %s (%s) compared on %g of the calls to %s",
        args.shadow_key,
        candidate.ref["digest"],
        args.shadow_sample_rate,
        active.ref["name"],
    )


def _set_at_eof(stop: threading.Event) -> None:
    # The raw descriptor: a thread blocked in sys.stdin's buffered reader aborts the
    # interpreter at exit.
    while os.read(sys.stdin.fileno(), 4096):
        pass
    stop.set()


if __name__ == "__main__":
    sys.exit(main())
