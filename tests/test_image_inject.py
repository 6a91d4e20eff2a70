"""``edgefleet image``: registration files into disk images and cloud-init seeds.

Every image here is a file the test builds (sfdisk, mkfs.vfat --offset, mkfs.ext4 -d
then copied in), and every check reads it back with a tool other than the one that
wrote it where there is one (mtools, debugfs, fsck, xorriso), byte for byte. Around
every write, the bytes outside the target partition are hashed before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgefleet.agent.registration import load_registration
from edgefleet.agent.settings import Settings, registration_candidates
from edgefleet.cli.app import app
from edgefleet.errors import ConfigError
from edgefleet.imaging import tools
from edgefleet.imaging.cloudinit import DEVICE_PATH, seed
from edgefleet.imaging.inject import inject
from tests.support.processes import AgentProcess, ControllerProcess, wait_for

MiB = 1024 * 1024
SECTOR = 512
PIN = "sha256:" + "ab" * 32
REGISTRATION = {
    "controller_url": "https://fleet.example:8443",
    "controller_id": "fleet-1",
    "root_pins": [PIN],
    "token": "efr.kid1.secret-secret",
}
NEEDED = {
    "sfdisk": "fdisk",
    "mcopy": "mtools",
    "mkfs.vfat": "dosfstools",
    "fsck.vfat": "dosfstools",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "mkswap": "util-linux",
    "xorriso": "xorriso",
}
runner = CliRunner()


@pytest.fixture(autouse=True)
def _tools() -> None:
    missing = sorted({pkg for tool, pkg in NEEDED.items() if _which(tool) is None})
    if missing:
        message = f"image tests need {', '.join(missing)}: apt-get install {' '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path=os.pathsep.join(tools.SBIN_DIRS))


def sh(*args: str | Path, input: bytes | None = None, check: bool = True) -> bytes:
    argv = [_which(str(args[0])) or str(args[0]), *map(str, args[1:])]
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
    done = subprocess.run(argv, input=input, capture_output=True, env=env, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({done.returncode}): {done.stderr.decode()}")
    return done.stdout


@dataclass(frozen=True)
class Part:
    number: int
    start: int  # sectors
    size: int  # sectors
    gpt: str  # sfdisk type on GPT
    mbr: str  # sfdisk type on MBR
    name: str

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def length(self) -> int:
        return self.size * SECTOR


BOOT = Part(1, 2048, 40 * MiB // SECTOR, "uefi", "c", "boot")
ROOT = Part(2, BOOT.start + BOOT.size, 24 * MiB // SECTOR, "linux", "83", "rootfs")
DATA = Part(3, ROOT.start + ROOT.size, 4 * MiB // SECTOR, "linux", "da", "data")
SWAP = Part(4, DATA.start + DATA.size, 4 * MiB // SECTOR, "swap", "82", "swap")
PARTS = (BOOT, ROOT, DATA, SWAP)
IMAGE_BYTES = 80 * MiB


def make_disk(tmp: Path, scheme: str, name: str = "disk.img") -> Path:
    """A device image: FAT boot (FAT32 on GPT, FAT16 on MBR) with config.txt, an ext4
    root with /etc/hostname, a partition of random bytes and a swap partition."""
    disk = tmp / name
    with disk.open("wb") as f:
        f.truncate(IMAGE_BYTES)
    label = "gpt" if scheme == "gpt" else "dos"
    lines = [f"label: {label}"]
    for p in PARTS:
        kind = p.gpt if scheme == "gpt" else p.mbr
        extra = f', name="{p.name}"' if scheme == "gpt" else ""
        lines.append(f"start={p.start}, size={p.size}, type={kind}{extra}")
    sh("sfdisk", "-q", disk, input=("\n".join(lines) + "\n").encode())
    fat32 = ["-F", "32", "-s", "1"] if scheme == "gpt" else []
    sh("mkfs.vfat", *fat32, "--offset", BOOT.start, "-n", "BOOTFS", disk, BOOT.length // 1024)
    config = tmp / "config.txt"
    config.write_text("dtparam=audio=on\n")
    sh("mcopy", "-i", f"{disk}@@{BOOT.offset}", config, "::/config.txt")
    tree = tmp / "rootfs-tree"
    (tree / "etc").mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "hostname").write_text("device\n")
    root = tmp / "rootfs.ext4"
    root.unlink(missing_ok=True)
    sh("mkfs.ext4", "-q", "-L", "rootfs", "-d", tree, root, f"{ROOT.length // 1024}k")
    swap = tmp / "swap.img"
    with swap.open("wb") as f:
        f.truncate(SWAP.length)
    sh("mkswap", "-L", "swap", swap)
    with disk.open("r+b") as f:
        f.seek(ROOT.offset)
        f.write(root.read_bytes())
        f.seek(DATA.offset)
        f.write(os.urandom(DATA.length))
        f.seek(SWAP.offset)
        f.write(swap.read_bytes())
    return disk


def regions(disk: Path, *, but: Part | None = None) -> dict[str, str]:
    """sha256 of every partition except ``but``, and of every byte outside partitions
    (partition tables, GPT backup, gaps)."""
    data = disk.read_bytes()
    out: dict[str, str] = {}
    outside = bytearray(data)
    for p in PARTS:
        if p != but:
            out[p.name] = hashlib.sha256(data[p.offset : p.offset + p.length]).hexdigest()
        outside[p.offset : p.offset + p.length] = b"\0" * p.length
    out["outside"] = hashlib.sha256(bytes(outside)).hexdigest()
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fat_read(disk: Path, part: Part, path: str) -> bytes:
    return sh("mcopy", "-i", f"{disk}@@{part.offset}", f"::/{path}", "-")


def ext_read(disk: Path, part: Part, path: str) -> tuple[bytes, str]:
    """The file's bytes and debugfs' stat of it."""
    device = f"{disk}?offset={part.offset}"
    stat = sh("debugfs", "-R", f"stat /{path}", device).decode()
    if "Inode:" not in stat:  # debugfs exits 0 on a missing file
        raise AssertionError(f"/{path} is not in partition {part.number}")
    return sh("debugfs", "-R", f"cat /{path}", device), stat


def partition_file(disk: Path, part: Part, tmp: Path) -> Path:
    out = tmp / f"part{part.number}.img"
    with disk.open("rb") as f:
        f.seek(part.offset)
        out.write_bytes(f.read(part.length))
    return out


@pytest.fixture
def registration(tmp_path: Path) -> Path:
    path = tmp_path / "registration.yaml"
    path.write_text(yaml.safe_dump(REGISTRATION, sort_keys=False))
    return path


def cli(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# --- disk images -------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["gpt", "mbr"])
def test_inject_writes_into_the_fat_boot_partition_by_default(
    tmp_path: Path, registration: Path, scheme: str
) -> None:
    disk = make_disk(tmp_path, scheme)
    before = regions(disk, but=BOOT)
    out = cli("image", "inject", disk, "--registration", registration)
    assert out.exit_code == 0, out.output
    assert "/boot/edgefleet/registration.yaml" in out.output
    assert fat_read(disk, BOOT, "edgefleet/registration.yaml") == registration.read_bytes()
    assert fat_read(disk, BOOT, "config.txt") == b"dtparam=audio=on\n"
    assert regions(disk, but=BOOT) == before
    sh("fsck.vfat", "-n", partition_file(disk, BOOT, tmp_path))  # exit 0: clean


@pytest.mark.parametrize(("scheme", "spec"), [("gpt", "rootfs"), ("mbr", "2"), ("mbr", "ROOTFS")])
def test_inject_writes_mode_0600_into_an_ext4_root_by_name_label_or_number(
    tmp_path: Path, registration: Path, scheme: str, spec: str
) -> None:
    disk = make_disk(tmp_path, scheme)
    before = regions(disk, but=ROOT)
    out = cli("image", "inject", disk, "-r", registration, "--partition", spec)
    assert out.exit_code == 0, out.output
    assert "/etc/edgefleet/registration.yaml" in out.output
    content, stat = ext_read(disk, ROOT, "etc/edgefleet/registration.yaml")
    assert content == registration.read_bytes()
    assert "Type: regular" in stat and "Mode:  0600" in stat
    assert "User:     0   Group:     0" in stat
    assert ext_read(disk, ROOT, "etc/hostname")[0] == b"device\n"
    assert regions(disk, but=ROOT) == before
    sh("e2fsck", "-fn", partition_file(disk, ROOT, tmp_path))  # exit 0: clean


def test_inject_again_replaces_the_file_in_both_file_systems(
    tmp_path: Path, registration: Path
) -> None:
    disk = make_disk(tmp_path, "gpt")
    for spec in ("boot", "rootfs"):
        inject(disk, registration, spec)
    newer = tmp_path / "newer.yaml"
    newer.write_text(yaml.safe_dump({**REGISTRATION, "token": "efr.kid2.other"}))
    before = regions(disk)
    for spec in ("boot", "rootfs"):
        inject(disk, newer, spec)
    after = regions(disk)
    assert {k: v for k, v in after.items() if k not in ("boot", "rootfs")} == {
        k: v for k, v in before.items() if k not in ("boot", "rootfs")
    }
    assert fat_read(disk, BOOT, "edgefleet/registration.yaml") == newer.read_bytes()
    assert ext_read(disk, ROOT, "etc/edgefleet/registration.yaml")[0] == newer.read_bytes()
    sh("fsck.vfat", "-n", partition_file(disk, BOOT, tmp_path))
    sh("e2fsck", "-fn", partition_file(disk, ROOT, tmp_path))


def test_inject_at_a_custom_path_says_the_agent_must_be_told(
    tmp_path: Path, registration: Path
) -> None:
    disk = make_disk(tmp_path, "mbr")
    out = cli("image", "inject", disk, "-r", registration, "-p", "2", "--path", "/opt/ef/r.yaml")
    assert out.exit_code == 0, out.output
    assert "--registration /opt/ef/r.yaml" in out.output
    assert ext_read(disk, ROOT, "opt/ef/r.yaml")[0] == registration.read_bytes()


def test_partitions_are_listed_with_their_file_systems(tmp_path: Path) -> None:
    disk = make_disk(tmp_path, "gpt")
    out = cli("image", "partitions", disk, "--output", "json")
    assert out.exit_code == 0, out.output
    rows = yaml.safe_load(out.output)
    assert [(r["number"], r["name"], r["label"], r["filesystem"], r["writable"]) for r in rows] == [
        (1, "boot", "BOOTFS", "FAT32", True),
        (2, "rootfs", "rootfs", "ext4", True),
        (3, "data", "", "no file system this tool recognises", False),
        (4, "swap", "", "Linux swap", False),
    ]


# --- first boot ----------------------------------------------------------------------------


def _device_root(disk: Path, tmp: Path) -> Path:
    """What the device's own file system shows: the ext4 root at /, the FAT boot at /boot."""
    root = tmp / "device-root"
    for part, path, mount in (
        (BOOT, "edgefleet/registration.yaml", "boot"),
        (ROOT, "etc/edgefleet/registration.yaml", ""),
    ):
        read = fat_read if part is BOOT else (lambda d, p, f: ext_read(d, p, f)[0])
        try:
            data = read(disk, part, path)
        except AssertionError:
            continue  # not injected into this partition
        target = root / mount / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def _agent_search(root: Path) -> list[Path]:
    """The agent's own search path (no --registration given), under ``root``."""
    return [root / p.relative_to("/") for p in registration_candidates(Settings())]


@pytest.mark.parametrize(
    ("spec", "seen_at"),
    [(None, "boot/edgefleet/registration.yaml"), ("rootfs", "etc/edgefleet/registration.yaml")],
)
def test_the_agent_finds_the_injected_file_in_its_search_path_on_first_boot(
    tmp_path: Path, registration: Path, spec: str | None, seen_at: str
) -> None:
    disk = make_disk(tmp_path, "gpt")
    done = inject(disk, registration, spec)
    root = _device_root(disk, tmp_path)
    assert (root / str(done.device_path).lstrip("/")).exists()
    found, reg = load_registration(_agent_search(root))
    assert found == root / seen_at
    assert reg.token == REGISTRATION["token"]
    assert reg.root_pins == [PIN]


def test_an_agent_enrols_and_reaches_ready_with_the_file_read_out_of_the_image(
    tmp_path: Path, registration: Path
) -> None:
    ctl = ControllerProcess(tmp_path / "ctl", device_interval_seconds=1).start()
    agent: AgentProcess | None = None
    try:
        real = ctl.registration(tmp_path / "real.yaml")
        disk = make_disk(tmp_path, "mbr")
        out = cli("image", "inject", disk, "-r", real)
        assert out.exit_code == 0, out.output
        found, _ = load_registration(_agent_search(_device_root(disk, tmp_path)))
        agent = AgentProcess(found, tmp_path / "agent", "SN-FLASHED")
        wait_for(lambda: agent.state().get("phase") == "ready", 90, "the flashed agent ready")
        listed = ctl.cli("devices", "list", "--state", "ready", "--output", "json")
        assert [d["id"] for d in json.loads(listed.stdout)] == [agent.state()["device_id"]]
    finally:
        if agent is not None:
            agent.stop()
        ctl.close()


# --- refusals: nothing written ------------------------------------------------------------


def _refused(disk: Path, *args: str | Path) -> str:
    before = digest(disk)
    out = cli("image", "inject", disk, *args)
    assert out.exit_code == 1, out.output
    assert digest(disk) == before, "a refused inject changed the image"
    return " ".join(out.output.split())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"controller_url": "http://fleet.example"}, "controller_url must be an https"),
        ({"root_pins": ["md5:00"]}, "root_pins"),
        ({"controller_id": None}, "field controller_id is missing"),
    ],
)
def test_an_invalid_registration_file_is_refused_before_the_image_is_touched(
    tmp_path: Path, change: dict, message: str
) -> None:
    disk = make_disk(tmp_path, "gpt")
    bad = tmp_path / "bad.yaml"
    data = {k: v for k, v in {**REGISTRATION, **change}.items() if v is not None}
    bad.write_text(yaml.safe_dump(data))
    assert message in _refused(disk, "-r", bad)


def test_an_unknown_partition_is_refused_with_the_partitions_found(
    tmp_path: Path, registration: Path
) -> None:
    disk = make_disk(tmp_path, "gpt")
    said = _refused(disk, "-r", registration, "--partition", "bootfs2")
    assert "no partition 'bootfs2'" in said
    assert "1 'boot' (FAT32 labelled 'BOOTFS'" in said and "2 'rootfs' (ext4" in said
    assert "9" in _refused(disk, "-r", registration, "-p", "9")


@pytest.mark.parametrize(("spec", "found"), [("data", "no file system"), ("4", "Linux swap")])
def test_a_partition_without_fat_or_ext4_is_refused_saying_what_it_holds(
    tmp_path: Path, registration: Path, spec: str, found: str
) -> None:
    disk = make_disk(tmp_path, "gpt")
    said = _refused(disk, "-r", registration, "-p", spec)
    assert found in said and "not FAT or ext2/3/4" in said


def test_an_ext4_with_an_unreplayed_journal_is_refused(tmp_path: Path, registration: Path) -> None:
    disk = make_disk(tmp_path, "mbr")
    sh("debugfs", "-w", "-R", "feature needs_recovery", f"{disk}?offset={ROOT.offset}")
    assert "run `e2fsck`" in _refused(disk, "-r", registration, "-p", "rootfs")


def test_a_file_system_larger_than_its_partition_is_refused(
    tmp_path: Path, registration: Path
) -> None:
    disk = make_disk(tmp_path, "mbr")
    lines = [f"start={p.start}, size={p.size}, type={p.mbr}" for p in PARTS]
    lines[0] = f"start={BOOT.start}, size={BOOT.size // 2}, type=c"
    sh("sfdisk", "-q", "--no-reread", disk, input=("label: dos\n" + "\n".join(lines)).encode())
    assert "could spill into the next partition" in _refused(disk, "-r", registration)


def test_what_is_not_a_partitioned_disk_image_is_refused(
    tmp_path: Path, registration: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    assert "not a disk image" in _refused(text, "-r", registration)
    bare = tmp_path / "boot.vfat"
    sh("mkfs.vfat", "-C", "-n", "BOOT", bare, 2048)
    assert "labelled 'BOOT' with no partition table" in _refused(bare, "-r", registration)
    out = cli("image", "inject", tmp_path / "absent.img", "-r", registration)
    assert out.exit_code == 1 and "does not exist" in out.output


def test_a_bad_path_is_refused(tmp_path: Path, registration: Path) -> None:
    disk = make_disk(tmp_path, "gpt")
    assert "no spaces, no .." in _refused(disk, "-r", registration, "--path", "../etc/x")
    assert "no spaces, no .." in _refused(disk, "-r", registration, "--path", "a b/x")
    said = _refused(disk, "-r", registration, "-p", "rootfs", "--path", "etc/hostname/x")
    assert "/etc/hostname in partition 2 is a regular, not a folder" in said


def test_a_missing_tool_names_its_debian_package(
    tmp_path: Path, registration: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = make_disk(tmp_path, "gpt")
    real_which = shutil.which

    def which(name: str, *args: object, **kwargs: object) -> str | None:
        return None if name in ("mcopy", "mdir", "mmd") else real_which(name, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", which)
    said = _refused(disk, "-r", registration)
    assert "mdir is not installed; install the Debian package mtools" in said


# --- cloud-init NoCloud seeds ------------------------------------------------------------


def iso_files(iso: Path, tmp: Path) -> dict[str, str]:
    out = tmp / f"extract-{iso.stem}"
    shutil.rmtree(out, ignore_errors=True)
    sh("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", out)
    return {p.name: p.read_text() for p in out.iterdir()}


def iso_label(iso: Path) -> str:
    info = sh("xorriso", "-indev", iso, "-pvd_info").decode()
    return next(line.split(":", 1)[1].strip() for line in info.splitlines() if "Volume Id" in line)


def fat_files(img: Path) -> dict[str, str]:
    names = sh("mdir", "-b", "-i", img, "::/").decode().split()
    return {n.rsplit("/", 1)[-1]: sh("mcopy", "-i", img, n, "-").decode() for n in names}


def our_entry(user_data: str) -> dict:
    assert user_data.startswith("#cloud-config\n")
    entries = yaml.safe_load(user_data)["write_files"]
    ours = [e for e in entries if e["path"] == DEVICE_PATH]
    assert len(ours) == 1
    return ours[0]


def test_an_iso_seed_writes_the_registration_file_with_mode_0600(
    tmp_path: Path, registration: Path
) -> None:
    iso = tmp_path / "seed.iso"
    out = cli("image", "seed", iso, "-r", registration, "--hostname", "shop-12-cam-1")
    assert out.exit_code == 0, out.output
    assert iso_label(iso) == "cidata"
    files = iso_files(iso, tmp_path)
    assert sorted(files) == ["meta-data", "user-data"]
    entry = our_entry(files["user-data"])
    assert entry["content"] == registration.read_text()
    assert (entry["permissions"], entry["owner"]) == ("0600", "root:root")
    meta = yaml.safe_load(files["meta-data"])
    assert meta["local-hostname"] == "shop-12-cam-1"
    assert meta["instance-id"].startswith("iid-edgefleet-")
    assert "runcmd" not in yaml.safe_load(files["user-data"])
    assert os.stat(iso).st_mode & 0o777 == 0o600


def test_a_fat_seed_is_labelled_cidata_and_can_enable_the_agent_unit(
    tmp_path: Path, registration: Path
) -> None:
    img = tmp_path / "seed.img"
    out = cli("image", "seed", img, "-r", registration, "--enable-service", "edgefleet.service")
    assert out.exit_code == 0, out.output
    assert "CIDATA" in sh("mlabel", "-s", "-i", img, "::").decode()
    files = fat_files(img)
    assert our_entry(files["user-data"])["content"] == registration.read_text()
    runcmd = yaml.safe_load(files["user-data"])["runcmd"]
    assert runcmd == [["systemctl", "enable", "--now", "edgefleet.service"]]


@pytest.mark.parametrize("fmt", ["iso", "fat"])
def test_an_existing_seed_is_merged_into_not_clobbered(
    tmp_path: Path, registration: Path, fmt: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "meta-data").write_text("instance-id: shop-12-cam-1\nlocal-hostname: cam-1\n")
    (src / "network-config").write_text("version: 2\nethernets: {eth0: {dhcp4: true}}\n")
    (src / "user-data").write_text(
        "#cloud-config\n# site defaults\npackages: [htop]\n"
        "write_files:\n- path: /etc/motd\n  content: hello\n"
        f"- path: {DEVICE_PATH}\n  content: stale\n"
        "runcmd:\n- [touch, /tmp/first-boot]\n"
    )
    seed_path = tmp_path / ("seed.iso" if fmt == "iso" else "seed.img")
    if fmt == "iso":
        sh("xorriso", "-as", "mkisofs", "-o", seed_path, "-V", "cidata", "-J", "-R", src)
    else:
        sh("mkfs.vfat", "-C", "-n", "CIDATA", seed_path, 1024)
        sh("mcopy", "-s", "-i", seed_path, *sorted(src.iterdir()), "::/")
    for _ in range(2):  # twice: still one entry of ours
        done = seed(seed_path, registration, enable_service="edgefleet.service")
        assert done.updated and done.instance_id == "shop-12-cam-1"
    files = iso_files(seed_path, tmp_path) if fmt == "iso" else fat_files(seed_path)
    assert files["network-config"] == (src / "network-config").read_text()
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "shop-12-cam-1",
        "local-hostname": "cam-1",
    }
    user = yaml.safe_load(files["user-data"])
    assert user["packages"] == ["htop"]
    assert [e["path"] for e in user["write_files"]] == ["/etc/motd", DEVICE_PATH]
    assert our_entry(files["user-data"])["content"] == registration.read_text()
    assert user["runcmd"] == [
        ["touch", "/tmp/first-boot"],
        ["systemctl", "enable", "--now", "edgefleet.service"],
    ]


def test_a_user_data_file_is_merged_into_a_new_seed(tmp_path: Path, registration: Path) -> None:
    base = tmp_path / "user-data.yaml"
    base.write_text("#cloud-config\ntimezone: Europe/Berlin\n")
    iso = tmp_path / "seed.iso"
    out = cli("image", "seed", iso, "-r", registration, "--user-data", base)
    assert out.exit_code == 0, out.output
    user = yaml.safe_load(iso_files(iso, tmp_path)["user-data"])
    assert user["timezone"] == "Europe/Berlin"
    assert user["write_files"][0]["path"] == DEVICE_PATH


def test_a_seed_whose_user_data_is_not_cloud_config_is_refused_and_left_alone(
    tmp_path: Path, registration: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "meta-data").write_text("instance-id: x\n")
    (src / "user-data").write_text("#!/bin/sh\necho hello\n")
    iso = tmp_path / "seed.iso"
    sh("xorriso", "-as", "mkisofs", "-o", iso, "-V", "cidata", "-J", "-R", src)
    before = digest(iso)
    out = cli("image", "seed", iso, "-r", registration)
    assert out.exit_code == 1
    assert "not #cloud-config (it starts with '#!/bin/sh')" in " ".join(out.output.split())
    assert digest(iso) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".edgefleet")] == []


def test_seed_refuses_to_overwrite_what_is_not_a_seed(tmp_path: Path, registration: Path) -> None:
    disk = make_disk(tmp_path, "mbr")
    before = digest(disk)
    out = cli("image", "seed", disk, "-r", registration)
    assert out.exit_code == 1
    assert "is not a NoCloud seed" in " ".join(out.output.split())
    assert digest(disk) == before


def test_seed_refuses_an_invalid_registration_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**REGISTRATION, "tokne": "x"}))
    out = cli("image", "seed", tmp_path / "seed.iso", "-r", bad)
    assert out.exit_code == 1
    assert "field tokne is not a registration field" in out.output
    assert not (tmp_path / "seed.iso").exists()


def test_the_seed_survives_yaml_awkward_registration_text(tmp_path: Path) -> None:
    """Trailing spaces and quotes cannot be a ``|`` block; the text must still round-trip."""
    reg = tmp_path / "reg.yaml"
    reg.write_text(
        "# issued by 'shop-12'   \ncontroller_url: \"https://fleet.example\"\n"
        f"controller_id: fleet-1\nroot_pins: [{PIN}]\ntoken: 'a: b'\n"
    )
    iso = tmp_path / "seed.iso"
    seed(iso, reg)
    assert our_entry(iso_files(iso, tmp_path)["user-data"])["content"] == reg.read_text()


def test_errors_are_config_errors_with_stable_codes(tmp_path: Path, registration: Path) -> None:
    disk = make_disk(tmp_path, "gpt")
    with pytest.raises(ConfigError) as caught:
        inject(disk, registration, "nope")
    assert caught.value.code == "partition_not_found"
    with pytest.raises(ConfigError) as caught:
        inject(disk, registration, "data")
    assert caught.value.code == "unsupported_filesystem"
