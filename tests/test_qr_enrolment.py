"""QR enrolment codes: the payload's format, labels that zbar reads (PNG as drawn, SVG
as rsvg-convert renders it), codes the controller redeems through the token's own
checks, and real agents that enrol from what a scanner read off a label."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update

from edgefleet.agent.qrpayload import (
    UNKNOWN_CONTROLLER_ID,
    learn_controller_id,
    registration_from_payload,
)
from edgefleet.agent.settings import load_settings
from edgefleet.controller.models import RegistrationToken
from edgefleet.controller.qr import encode
from edgefleet.enrolcode import (
    CODE_ALPHABET,
    build_payload,
    decode_pin,
    encode_pin,
    normalise_code,
    parse_payload,
)
from edgefleet.errors import ConfigError
from tests.support.apiclient import Api, new_key
from tests.support.processes import AgentProcess, ControllerProcess, wait_for

PIN = "sha256:" + hashlib.sha256(b"root").hexdigest()
BACKUP_PIN = "sha256:" + hashlib.sha256(b"backup root").hexdigest()
QR_ALPHANUMERIC = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")


# -- real decoders -------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is missing: apt-get install zbar-tools librsvg2-bin (`make test`)")
    return path


def zbar_png_bytes(png: bytes) -> list[str]:
    """Decode with zbar through pyzbar, in process."""
    try:
        from PIL import Image
        from pyzbar.pyzbar import decode
    except ImportError as exc:  # pragma: no cover - the message is the point
        pytest.skip(f"pyzbar or libzbar0 is missing ({exc}): pip install pyzbar, apt libzbar0")
    return [s.data.decode() for s in decode(Image.open(io.BytesIO(png)))]


def zbarimg(path: Path) -> str:
    """Decode with Debian's zbarimg, as a person at a provisioning station would."""
    done = subprocess.run(
        [_tool("zbarimg"), "--raw", "-q", str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def render_svg(svg: Path, dpi: int = 150) -> Path:
    png = svg.with_suffix(".rendered.png")
    done = subprocess.run(
        [_tool("rsvg-convert"), "-d", str(dpi), "-p", str(dpi), "-o", str(png), str(svg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return png


# -- the payload ---------------------------------------------------------------------


def test_payload_round_trips_in_qr_alphanumeric_but_for_the_hash() -> None:
    payload = build_payload("https://fleet.example.com:8443", "7KQ2M9XD4T", [PIN, BACKUP_PIN])
    url, _, pins = payload.partition("#")
    assert url == "HTTPS://FLEET.EXAMPLE.COM:8443/E/7KQ2M9XD4T"
    assert set(url) <= QR_ALPHANUMERIC and set(pins) <= QR_ALPHANUMERIC
    parsed = parse_payload(payload)
    assert parsed.controller_url == "https://fleet.example.com:8443"
    assert parsed.code == "7KQ2M9XD4T"
    assert parsed.root_pins == [PIN, BACKUP_PIN]
    assert parsed.credential == "efq.7KQ2M9XD4T"


def test_payload_keeps_a_path_prefix_of_the_public_url() -> None:
    payload = build_payload("https://fleet.example.com/edgefleet/", "7KQ2M9XD4T", [PIN])
    assert payload.startswith("HTTPS://FLEET.EXAMPLE.COM/edgefleet/E/7KQ2M9XD4T#")
    assert parse_payload(payload).controller_url == "https://fleet.example.com/edgefleet"


def test_pins_are_read_as_base32_base64url_or_kubeadm_hex() -> None:
    raw = bytes.fromhex(PIN.removeprefix("sha256:"))
    b64 = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert len(encode_pin(PIN)) == 52
    assert decode_pin(encode_pin(PIN)) == PIN
    assert decode_pin(encode_pin(PIN).lower()) == PIN
    assert decode_pin(b64) == PIN
    assert decode_pin(PIN.upper().replace("SHA256", "sha256")) == PIN
    code = "7KQ2M9XD4T"
    assert parse_payload(f"https://h:1/e/{code}#{b64}.{PIN}").root_pins == [PIN, PIN]


def test_codes_forgive_case_hyphens_and_look_alikes() -> None:
    assert normalise_code("7kq2m-9xd4t") == "7KQ2M9XD4T"
    assert normalise_code("O1IL0ABCDE") == "01110ABCDE"
    assert normalise_code("7KQ2M9XD4") is None
    assert normalise_code("7KQ2M9XD4U") is None  # U is not in Crockford's alphabet
    assert set(CODE_ALPHABET).isdisjoint("ILOU")


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ("HTTPS://H:8443/E/7KQ2M9XD4T", "no root pin after '#'"),
        ("http://h:8443/E/7KQ2M9XD4T#" + encode_pin(PIN), "https://HOST"),
        ("HTTPS://H:8443/X/7KQ2M9XD4T#" + encode_pin(PIN), "must end in /E/CODE"),
        ("HTTPS://H:8443/E/7KQ2#" + encode_pin(PIN), "code is not 10 characters"),
        ("HTTPS://H:99999/E/7KQ2M9XD4T#" + encode_pin(PIN), "not start with a valid URL"),
        ("HTTPS://H:8443/E/7KQ2M9XD4T#" + encode_pin(PIN)[:-1], "root pin"),
        ("HTTPS://H:8443/E/7KQ2M9XD4T?x=1#" + encode_pin(PIN), "no user, password or query"),
        ("garbage", "no root pin"),
    ],
)
def test_malformed_payload_is_a_config_error_naming_the_part(payload: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        parse_payload(payload)
    assert "7KQ2M9XD4T" not in caught.value.message, "the code is a secret: never echoed"


@pytest.mark.parametrize(
    ("url", "pins", "version"),
    [
        ("https://127.0.0.1:8443", 1, 5),
        ("https://fleet.example.com:8443", 1, 5),
        ("https://fleet.example.com:8443", 2, 6),  # while a root rotation is staged
        ("https://edgefleet-controller.factory-12.example.com:8443", 1, 6),
    ],
)
def test_typical_labels_stay_small(url: str, pins: int, version: int) -> None:
    symbol = encode(build_payload(url, "7KQ2M9XD4T", [PIN, BACKUP_PIN][:pins]))
    assert (symbol.version, symbol.modules) == (version, 17 + 4 * version)
    assert symbol.error_correction == "M"


def test_agent_reads_a_payload_and_keeps_the_controller_id_it_learns(tmp_path: Path) -> None:
    payload = build_payload("https://127.0.0.1:8443", "7KQ2M9XD4T", [PIN])
    reg = registration_from_payload(payload, tmp_path)
    assert (reg.controller_url, reg.token, reg.root_pins) == (
        "https://127.0.0.1:8443",
        "efq.7KQ2M9XD4T",
        [PIN],
    )
    assert reg.controller_id == UNKNOWN_CONTROLLER_ID
    learnt = learn_controller_id(tmp_path, reg, "ctl-1")
    assert learnt.controller_id == "ctl-1"
    assert registration_from_payload(payload, tmp_path).controller_id == "ctl-1"
    assert learn_controller_id(tmp_path, learnt, "ctl-2").controller_id == "ctl-1"
    other = build_payload("https://10.0.0.1:8443", "7KQ2M9XD4T", [PIN])
    assert registration_from_payload(other, tmp_path).controller_id == UNKNOWN_CONTROLLER_ID
    with pytest.raises(ConfigError, match=r"^qr_payload: "):
        registration_from_payload("HTTPS://H/E/7KQ2M9XD4T", tmp_path)


def test_agent_takes_the_payload_from_flag_env_or_config(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("qr_payload: FROM-FILE\n")
    assert load_settings({}, env={}, config=config).qr_payload == "FROM-FILE"
    env = {"EDGEFLEET_AGENT_QR_PAYLOAD": "FROM-ENV"}
    assert load_settings({}, env=env, config=config).qr_payload == "FROM-ENV"
    assert load_settings({"qr_payload": "FLAG"}, env=env).qr_payload == "FLAG"


# -- the controller ------------------------------------------------------------------


def _qr_token(api: Api, **kw: Any) -> dict[str, Any]:
    api.site()
    return api.token(qr=True, **kw)


def _count(api: Api, table: str) -> int:
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def _uses(api: Api, kid: str) -> int:
    return next(t for t in api.ok("GET", "/tokens", api.admin) if t["kid"] == kid)["uses"]


def test_qr_token_answers_payload_facts_and_labels_zbar_reads(api: Api, tmp_path: Path) -> None:
    tok = _qr_token(api)
    qr = tok["qr"]
    assert qr["payload"] == build_payload(
        tok["registration"]["controller_url"], qr["code"], tok["registration"]["root_pins"]
    )
    assert (qr["version"], qr["modules"], qr["error_correction"]) == (5, 37, "M")
    assert qr["segments"] == ["alphanumeric:35", "byte:1", "alphanumeric:52"]
    assert tok["require_approval"] is True, "approval is the default for a QR token"
    assert tok["enrolment_code"] is True

    assert zbar_png_bytes(base64.b64decode(qr["png_base64"])) == [qr["payload"]]
    (tmp_path / "label.png").write_bytes(base64.b64decode(qr["png_base64"]))
    assert zbarimg(tmp_path / "label.png") == qr["payload"]
    svg = tmp_path / "label.svg"
    svg.write_text(qr["svg"])
    for dpi in (96, 300):
        assert zbarimg(render_svg(svg, dpi)) == qr["payload"]
    assert "shop-1" in qr["svg"] and tok["kid"] in qr["svg"]


def test_code_is_stored_only_as_a_hash_and_listed_never(api: Api) -> None:
    tok = _qr_token(api)
    code = tok["qr"]["code"]
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(text("SELECT * FROM registrationtoken")).all()
    assert rows and all(code not in str(tuple(row)) for row in rows)
    listed = api.ok("GET", "/tokens", api.admin)
    assert listed[0]["enrolment_code"] is True and "qr" not in listed[0]
    assert code not in json.dumps(listed)


def test_code_enrols_a_device_that_awaits_approval_and_learns_the_controller_id(
    api: Api,
) -> None:
    tok = _qr_token(api, max_uses=1)
    credential = parse_payload(tok["qr"]["payload"]).credential
    key = new_key()
    waiting = api.enrol(credential, key, serial="SN-QR")
    assert waiting.status_code == 202, waiting.text
    body = waiting.json()
    assert body["state"] == "awaiting_approval" and body["certificate_chain"] is None
    assert body["controller_id"] == api.controller_id
    again = api.enrol(credential.lower(), key)  # a retry (and codes forgive case)
    assert (again.status_code, again.json()["device_id"]) == (202, body["device_id"])
    api.ok("POST", f"/devices/{body['device_id']}/approve", api.admin)
    done = api.enrol(credential, key)
    assert done.status_code == 200 and "BEGIN CERTIFICATE" in done.json()["certificate_chain"]
    assert _uses(api, tok["kid"]) == 1
    # The token's own secret opens the same token: a retry with it is the same device.
    assert api.enrol(tok["token"], key).json()["device_id"] == body["device_id"]


def test_no_approval_code_enrols_at_once_and_its_use_limit_holds(api: Api) -> None:
    tok = _qr_token(api, require_approval=False, max_uses=1)
    assert tok["require_approval"] is False
    credential = parse_payload(tok["qr"]["payload"]).credential
    assert api.enrol(credential).status_code == 200
    second = api.enrol(credential)
    assert second.status_code == 410, second.text
    assert second.json()["error"]["code"] == "token_exhausted"
    assert _count(api, "device") == 1 and _uses(api, tok["kid"]) == 1


def _tampered(code: str) -> str:
    swap = CODE_ALPHABET[(CODE_ALPHABET.index(code[3]) + 1) % len(CODE_ALPHABET)]
    return code[:3] + swap + code[4:]


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("unknown", 401, "token_invalid"),
        ("tampered", 401, "token_invalid"),
        ("malformed", 401, "token_invalid"),
        ("expired", 410, "token_expired"),
        ("revoked", 410, "token_revoked"),
    ],
)
def test_bad_codes_are_refused_with_reason_and_store_nothing(
    api: Api, case: str, status: int, error: str
) -> None:
    tok = _qr_token(api, require_approval=False)
    code = tok["qr"]["code"]
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    if case == "unknown":
        code = "0000000000" if code != "0000000000" else "0000000001"
    elif case == "tampered":
        code = _tampered(code)
    elif case == "malformed":
        code = code[:7]
    elif case == "expired":
        with rt.engine.begin() as conn:
            conn.execute(
                update(RegistrationToken.__table__)  # type: ignore[attr-defined]
                .where(RegistrationToken.__table__.c.kid == tok["kid"])  # type: ignore[attr-defined]
                .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
            )
    elif case == "revoked":
        api.ok("POST", f"/tokens/{tok['kid']}/revoke", api.admin)
    r = api.enrol(f"efq.{code}")
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == error and err["message"]
    assert tok["qr"]["code"] not in err["message"]
    assert _count(api, "device") == 0 and _uses(api, tok["kid"]) == 0


def test_a_device_enrolled_with_another_token_cannot_switch_to_a_code(api: Api) -> None:
    api.site()
    plain = api.token()
    tok = api.token(qr=True)
    key = new_key()
    assert api.enrol(plain["token"], key).status_code == 200
    r = api.enrol(f"efq.{tok['qr']['code']}", key)
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_in_use"


# -- real processes ------------------------------------------------------------------


def _cli_json(ctl: ControllerProcess, *args: str) -> Any:
    out = ctl.cli(*args, "--output", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_agents_enrol_from_scanned_labels_and_end_ready(tmp_path: Path) -> None:
    """SQLite. Labels printed with the CLI (PNG and SVG), read back by zbarimg; the agents
    get only what the scanner read. One approves by CLI, one needs no approval, a third
    finds the second's single use spent; a restart needs no second enrolment."""
    _tool("zbarimg")
    _tool("rsvg-convert")
    ctl = ControllerProcess(tmp_path / "ctl", device_interval_seconds=1).start()
    agents: list[AgentProcess] = []
    try:
        assert ctl.cli("sites", "create", "shop-qr").returncode == 0
        png = tmp_path / "a.png"
        held = _cli_json(ctl, "tokens", "create", "--site", "shop-qr", "--qr", str(png))
        assert held["require_approval"] is True
        assert held["qr"]["label_file"] == str(tmp_path / "a.png")
        assert "png_base64" not in held["qr"] and "svg" not in held["qr"]
        assert (tmp_path / "a.png").stat().st_mode & 0o077 == 0
        scanned_a = zbarimg(tmp_path / "a.png")
        assert scanned_a == held["qr"]["payload"]
        shown = ctl.cli("tokens", "create", "--site", "shop-qr", "--qr", str(tmp_path / "c.png"))
        assert shown.returncode == 0, shown.stderr
        assert "version 5, 37x37 modules, error correction M" in shown.stdout
        assert f"QR payload (shown once): HTTPS://127.0.0.1:{ctl.port}/E/" in shown.stdout
        wrong = ctl.cli("tokens", "create", "--site", "shop-qr", "--qr", str(tmp_path / "l.jpg"))
        assert wrong.returncode != 0 and ".png or .svg" in wrong.stderr

        svg = tmp_path / "b.svg"
        once = _cli_json(
            ctl, "tokens", "create", "--site", "shop-qr", "--qr", str(svg), "--no-approval",
            "--uses", "1",
        )  # fmt: skip
        assert once["require_approval"] is False
        scanned_b = zbarimg(render_svg(svg))
        assert scanned_b == once["qr"]["payload"]

        a = AgentProcess(None, tmp_path / "agent-a", "SN-QR-A", qr_payload=scanned_a)
        b = AgentProcess(None, tmp_path / "agent-b", "SN-QR-B", qr_payload=scanned_b)
        agents += [a, b]
        wait_for(lambda: b.state().get("phase") == "ready", 60, "agent b (no approval) ready")
        wait_for(lambda: a.state().get("phase") == "awaiting_approval", 60, "agent a to wait")
        device_a = a.state()["device_id"]
        waiting = _cli_json(ctl, "devices", "list", "--state", "awaiting_approval")
        assert [d["id"] for d in waiting] == [device_a]
        approved = ctl.cli("devices", "approve", device_a)
        assert approved.returncode == 0, approved.stderr
        wait_for(lambda: a.state().get("phase") == "ready", 60, "agent a ready after approval")
        controller_id = (tmp_path / "ctl" / "controller-id").read_text().strip()
        for agent in (a, b):
            stored = json.loads((agent.state_dir / "controller.json").read_text())
            assert stored == {"controller_url": ctl.url, "controller_id": controller_id}

        # The second label's single use is spent: a third device is refused, and says why.
        c = AgentProcess(None, tmp_path / "agent-c", "SN-QR-C", qr_payload=scanned_b)
        agents.append(c)
        wait_for(
            lambda: "token_exhausted" in (c.state().get("last_error") or ""),
            60,
            "agent c to be told the code is used up",
        )
        assert c.proc.poll() is None, "a refused agent keeps asking (slowly)"

        # A restart with the same payload is the same device, signing in with the controller
        # id it kept: no second enrolment, and it goes on reporting.
        a.stop()

        def last_seen() -> str | None:
            with ctl.client() as client:
                return client.get(f"/devices/{device_a}").json()["last_seen_at"]

        before = last_seen()
        a2 = AgentProcess(None, a.state_dir, "SN-QR-A", qr_payload=scanned_a)
        agents.append(a2)
        wait_for(lambda: last_seen() != before, 30, "the restarted agent to report", every=0.5)
        assert a2.state()["device_id"] == device_a and a2.state()["last_error"] is None
        assert a2.log.read_text().count("enrolled device_id=") == 1
        tokens = {t["kid"]: t for t in _cli_json(ctl, "tokens", "list")}
        assert tokens[held["kid"]]["uses"] == 1 and tokens[once["kid"]]["uses"] == 1
        assert len(_cli_json(ctl, "devices", "list")) == 2
    finally:
        for agent in agents:
            agent.stop()
        ctl.close()


def test_agent_with_a_malformed_payload_exits_2_saying_what_is_wrong(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--state-dir", str(tmp_path)],
        env={"EDGEFLEET_AGENT_QR_PAYLOAD": "HTTPS://H:1/E/7KQ2M9XD4T", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "qr_payload" in done.stderr and "no root pin" in done.stderr
    assert "7KQ2M9XD4T" not in done.stderr
