"""``edgefleet image seed``: a cloud-init NoCloud seed carrying the registration file.

A seed is a small volume labelled ``cidata`` (ISO 9660, made with xorriso) or
``CIDATA`` (FAT, made with mkfs.vfat and mtools) holding ``meta-data`` and
``user-data``. Our user-data is ``#cloud-config`` whose ``write_files`` puts the
registration file at /etc/edgefleet/registration.yaml, owned by root, mode 0600: the
first place the agent looks. An existing seed is updated, not clobbered: its files are
kept, its user-data is parsed and our one ``write_files`` entry added (or replaced),
its instance-id is kept. The new seed is built beside the old one and renamed over it,
so a failure leaves the old seed as it was.

Only ``#cloud-config`` user-data is merged into; a shell script, ``#include`` or MIME
multipart is refused rather than guessed at. Comments in merged user-data are lost
(it is parsed and written again).
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgefleet.errors import ConfigError
from edgefleet.imaging import tools
from edgefleet.imaging.probe import PROBE_BYTES, iso_volume_id, probe_bytes
from edgefleet.imaging.source import read_registration

DEVICE_PATH = "/etc/edgefleet/registration.yaml"
HEADER = "#cloud-config"
FORMATS = {".iso": "iso", ".img": "fat", ".vfat": "fat", ".fat": "fat"}
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


@dataclass(frozen=True)
class Seed:
    path: Path
    format: str
    updated: bool
    """True if an existing seed was merged into."""
    files: list[str]
    instance_id: str


class _Literal(str):
    """A string written as a YAML ``|`` block, so the file stays readable in user-data."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", str(s), style="|")
)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def merge_user_data(
    existing: str | None, registration: str, enable_service: str | None = None
) -> str:
    """``existing`` user-data (None: none) with our write_files entry, as #cloud-config."""
    config: dict[str, Any] = {}
    if existing is not None and existing.strip():
        first = existing.lstrip().splitlines()[0].strip()
        if not first.startswith(HEADER):
            raise ConfigError(
                f"the existing user-data is not {HEADER} (it starts with {first[:40]!r}); "
                f"only {HEADER} can be merged into: convert it, or give a {HEADER} file "
                "with --user-data",
                code="not_cloud_config",
            )
        try:
            loaded = yaml.safe_load(existing)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"the existing user-data is not valid YAML: {exc}", code="not_cloud_config"
            ) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                "the existing user-data is not a YAML mapping of cloud-config keys",
                code="not_cloud_config",
            )
        config = loaded or {}
    files = config.get("write_files") or []
    if not isinstance(files, list):
        raise ConfigError("write_files in the existing user-data is not a list")
    files = [f for f in files if not (isinstance(f, dict) and f.get("path") == DEVICE_PATH)]
    files.append(
        {
            "path": DEVICE_PATH,
            "owner": "root:root",
            "permissions": "0600",
            "content": _Literal(registration),
        }
    )
    config["write_files"] = files
    if enable_service:
        runcmd = config.get("runcmd") or []
        if not isinstance(runcmd, list):
            raise ConfigError("runcmd in the existing user-data is not a list")
        command = ["systemctl", "enable", "--now", enable_service]
        if command not in runcmd:
            runcmd.append(command)
        config["runcmd"] = runcmd
    text = f"{HEADER}\n{_dump(config)}"
    back = yaml.safe_load(text)["write_files"][-1]["content"]
    if back != registration:  # a representer bug must never ship a wrong token
        raise ConfigError("internal error: the registration did not survive YAML round trip")
    return text


def merge_meta_data(existing: str | None, hostname: str | None) -> tuple[str, str]:
    """(meta-data text, instance-id): the existing instance-id is kept, or one is made."""
    meta: dict[str, Any] = {}
    if existing is not None and existing.strip():
        try:
            loaded = yaml.safe_load(existing)
        except yaml.YAMLError as exc:
            raise ConfigError(f"the existing meta-data is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError("the existing meta-data is not a YAML mapping")
        meta = loaded
    if not meta.get("instance-id"):
        meta = {"instance-id": f"iid-edgefleet-{secrets.token_hex(6)}", **meta}
    if hostname is not None:
        if not _HOSTNAME.match(hostname):
            raise ConfigError(f"--hostname {hostname!r} is not a valid host name")
        meta["local-hostname"] = hostname
    return _dump(meta), str(meta["instance-id"])


def seed_format(output: Path, fmt: str | None) -> str:
    """Explicit ``--format``, else what an existing seed is, else the file name's suffix."""
    if fmt is not None:
        if output.exists():
            _existing_format(output)  # refuse to replace something that is not a seed
        return fmt
    if output.exists():
        return _existing_format(output)
    by_suffix = FORMATS.get(output.suffix.lower())
    if by_suffix:
        return by_suffix
    raise ConfigError(
        f"cannot tell the seed format from the name {output.name}; name it .iso or .img, "
        "or pass --format iso|fat"
    )


def _existing_format(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(PROBE_BYTES)
    label = iso_volume_id(head)
    if label is not None:
        kind = "iso"
    else:
        fs = probe_bytes(head)
        if fs.kind != "fat":
            raise ConfigError(
                f"{path} exists and is not a NoCloud seed (it holds {fs.describe()}); "
                "refusing to overwrite it: remove it or choose another output",
                code="not_a_seed",
            )
        kind, label = "fat", fs.label
    if label.casefold() != "cidata":
        raise ConfigError(
            f"{path} exists and is not a NoCloud seed (volume label {label!r}, "
            "expected cidata); refusing to overwrite it",
            code="not_a_seed",
        )
    return kind


def _extract(path: Path, into: Path) -> None:
    kind = _existing_format(path)
    if kind == "iso":
        tools.run(
            ["xorriso", "-osirrox", "on", "-indev", path, "-extract", "/", into],
            f"reading the existing seed {path}",
        )
        for d, _, _ in os.walk(into):  # xorriso keeps the ISO's read-only modes
            os.chmod(d, 0o700)
    else:
        tools.run(["mcopy", "-s", "-n", "-i", path, "::/", into], f"reading the seed {path}")


def _build(stage: Path, out: Path, fmt: str) -> None:
    if fmt == "iso":
        tools.run(
            ["xorriso", "-as", "mkisofs", "-quiet", "-o", out, "-V", "cidata", "-J", "-R", stage],
            "making the ISO seed",
        )
        return
    used = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    kib = max(1024, 2 * used // 1024 + 512)
    tools.run(["mkfs.vfat", "-C", "-n", "CIDATA", out, kib], "making the FAT seed")
    entries = sorted(stage.iterdir())
    tools.run(
        ["mcopy", "-s", "-i", out, *entries, "::/"], "copying user-data and meta-data to the seed"
    )


def seed(
    output: Path,
    registration: Path,
    *,
    fmt: str | None = None,
    hostname: str | None = None,
    user_data: Path | None = None,
    enable_service: str | None = None,
) -> Seed:
    """Write (or update) the NoCloud seed ``output``; see the module docstring."""
    data, _ = read_registration(registration)
    fmt = seed_format(output, fmt)
    if fmt not in ("iso", "fat"):
        raise ConfigError(f"--format must be iso or fat, not {fmt!r}")
    tools.find("xorriso" if fmt == "iso" else "mkfs.vfat")
    tools.find("mcopy")
    updated = output.exists()
    if updated and output.is_dir():
        raise ConfigError(f"{output} is a folder; name the seed file to write")
    with tempfile.TemporaryDirectory(prefix=".edgefleet-seed-", dir=output.parent) as tmp:
        stage = Path(tmp) / "seed"
        stage.mkdir(mode=0o700)
        if updated:
            _extract(output, stage)
        base = stage / "user-data"
        if user_data is not None:
            try:
                base_text: str | None = user_data.read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read --user-data {user_data}: {exc}") from exc
        else:
            base_text = base.read_text() if base.exists() else None
        meta_path = stage / "meta-data"
        user_text = merge_user_data(base_text, data.decode(), enable_service)
        meta_text, instance_id = merge_meta_data(
            meta_path.read_text() if meta_path.exists() else None, hostname
        )
        for path, text in ((base, user_text), (meta_path, meta_text)):
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        files = sorted(p.name for p in stage.iterdir())
        built = Path(tmp) / "seed.out"
        _build(stage, built, fmt)
        os.chmod(built, 0o600)  # it carries the token
        os.replace(built, output)
    return Seed(output, fmt, updated, files, instance_id)
