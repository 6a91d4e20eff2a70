"""``edgefleet agent run``: the device daemon's own entry point.

Kept apart from the Typer CLI (argparse, stdlib only) so the daemon's memory
and start-up never carry the operator tooling.

Exit codes: 0 stopped cleanly (SIGTERM/SIGINT) or ``--once`` done; 1 an
unexpected internal error; 2 a configuration problem (flag, env var,
config or registration file); 3 an operator rejected the enrolment;
4 the device was decommissioned.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_REJECTED = 3
EXIT_DECOMMISSIONED = 4

log = logging.getLogger("edgefleet.agent")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgefleet agent run",
        description="Run the Edgefleet device agent: enrol, then follow the desired state. "
        "Every flag has an EDGEFLEET_AGENT_<NAME> environment variable and a config file key.",
    )
    p.add_argument("--config", type=Path, help="YAML config file (EDGEFLEET_AGENT_CONFIG)")
    p.add_argument(
        "--registration",
        type=Path,
        help="registration file (EDGEFLEET_AGENT_REGISTRATION; default: "
        "/etc/edgefleet/registration.yaml, /boot/edgefleet/registration.yaml, "
        "/boot/firmware/edgefleet/registration.yaml)",
    )
    p.add_argument(
        "--qr-payload",
        dest="qr_payload",
        metavar="PAYLOAD",
        help="enrol with a scanned QR label (HTTPS://HOST:PORT/E/CODE#PIN) instead of a "
        "registration file (EDGEFLEET_AGENT_QR_PAYLOAD, which keeps it out of `ps`)",
    )
    p.add_argument(
        "--state-dir",
        dest="state_dir",
        type=Path,
        help="where keys and state live "
        "(EDGEFLEET_AGENT_STATE_DIR; default /var/lib/edgefleet/agent)",
    )
    p.add_argument("--serial", help="device serial (default: /sys/class/dmi/id/product_serial)")
    p.add_argument(
        "--hardware-id", dest="hardware_id", help="hardware id (default: /etc/machine-id)"
    )
    p.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--socket-dir",
        dest="socket_dir",
        type=Path,
        help="where the model runners' sockets go (EDGEFLEET_AGENT_SOCKET_DIR; "
        "default <state dir>/run)",
    )
    p.add_argument(
        "--registry-mirrors",
        dest="registry_mirrors",
        metavar="URLS",
        help="comma-separated base URLs of site registry mirrors, tried before the origin "
        "(EDGEFLEET_AGENT_REGISTRY_MIRRORS)",
    )
    p.add_argument(
        "--slot-images",
        dest="slot_images",
        metavar="A=PATH,B=PATH",
        help="keep the A/B slots on block devices or image files instead of folders "
        "(EDGEFLEET_AGENT_SLOT_IMAGES)",
    )
    p.add_argument(
        "--model-threads",
        dest="model_threads",
        type=int,
        help="onnxruntime threads per model (EDGEFLEET_AGENT_MODEL_THREADS; default 1)",
    )
    p.add_argument(
        "--mode",
        choices=["direct", "k3s"],
        help="where the desired state comes from: the device API (direct, the default) or "
        "the ConfigMap the site's Flux/Argo CD applied (k3s) (EDGEFLEET_AGENT_MODE)",
    )
    p.add_argument(
        "--once",
        action="store_const",
        const=True,
        help="enrol if needed, fetch the desired state, report status once, then exit 0",
    )
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(message)s",
    )


def _install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT asks the loop to stop; a second one exits at once."""

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def main(argv: list[str] | None = None) -> int:
    """Run the agent; return the process exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from edgefleet.agent.settings import load_settings, registration_candidates
    from edgefleet.errors import ConfigError

    flags = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        settings = load_settings(flags, config=args.config)
    except ConfigError as exc:
        _setup_logging("info")
        log.error("configuration: %s", exc.message)
        return EXIT_CONFIG
    _setup_logging(settings.log_level)

    from edgefleet.agent.daemon import Agent, Decommissioned, Rejected
    from edgefleet.agent.qrpayload import registration_from_payload
    from edgefleet.agent.registration import load_registration

    stop = threading.Event()
    _install_signal_handlers(stop)
    try:
        if settings.qr_payload:
            if settings.registration is not None:
                raise ConfigError("give a registration file or a QR payload, not both")
            source = "QR payload"
            registration = registration_from_payload(settings.qr_payload, settings.state_dir)
        else:
            path, registration = load_registration(registration_candidates(settings))
            source = str(path)
        log.info(
            "starting agent state_dir=%s registration=%s controller=%s",
            settings.state_dir,
            source,
            registration.controller_url,
        )
        return Agent(settings, registration, stop=stop).run()
    except ConfigError as exc:
        log.error("configuration: %s", exc.message)
        return EXIT_CONFIG
    except Rejected as exc:
        log.error("%s", exc.message)
        return EXIT_REJECTED
    except Decommissioned as exc:
        log.error("%s", exc.message)
        return EXIT_DECOMMISSIONED
    except Exception:
        log.exception("internal error; please report it with this log")
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
