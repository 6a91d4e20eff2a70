"""Bootloader environments on file-backed images: the test plays the bootloader.

The agent side writes through the real tools (``grub-editenv``; ``fw_setenv`` /
``fw_printenv`` over an image made with ``mkenvimage``). The bootloader side
reads and writes the raw environment the way GRUB and U-Boot do (GRUB's
1024-byte block; U-Boot's CRC32-checked image), following the boot script
documented in ``edgefleet/agent/slots/bootenv.py``, and decides which slot
boots. Nothing reboots.
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.agent.slots.bootenv import BootEnv, GrubEnv, UBootEnv
from edgefleet.errors import ConfigError

GRUB_HEADER = b"# GRUB Environment Block\n"
UBOOT_ENV_SIZE = 0x4000
ALTBOOTCMD = (
    "setenv edgefleet_slot ${edgefleet_good}; setenv upgrade_available 0; "
    "setenv bootcount 0; saveenv; run bootcmd"
)


def _need(*tools: str, package: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not found: apt-get install {package} (deps/apt-test.txt)"
        )


# -- GRUB: the grub.cfg script of bootenv.py, on the raw environment block ------------------


def _grub_read(path: Path) -> dict[str, str]:
    raw = path.read_bytes()
    assert len(raw) == 1024 and raw.startswith(GRUB_HEADER), "not a GRUB environment block"
    lines = raw[len(GRUB_HEADER) :].decode().split("\n")
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _grub_save(path: Path, env: dict[str, str]) -> None:
    """``save_env``: the block rewritten in place, same size, padded with '#'."""
    body = GRUB_HEADER + b"".join(f"{k}={v}\n".encode() for k, v in env.items())
    path.write_bytes(body.ljust(1024, b"#"))


def grub_boots(path: Path) -> str:
    env = _grub_read(path)
    slot = env["edgefleet_default"]
    if env.get("edgefleet_try"):
        slot = env["edgefleet_try"]
        attempts = env.get("edgefleet_attempts", "")
        if attempts in tuple("123456789"):  # the elif chain, 9 down to 1
            env["edgefleet_attempts"] = str(int(attempts) - 1)
        else:
            env["edgefleet_try"] = ""
            slot = env["edgefleet_default"]
        _grub_save(path, env)
    return slot


# -- U-Boot: bootcount/bootlimit/altbootcmd on the raw, CRC-checked environment -------------


def _uboot_read(image: Path) -> dict[str, str]:
    raw = image.read_bytes()
    data = raw[4:]
    assert int.from_bytes(raw[:4], "little") == zlib.crc32(data), "U-Boot would reject this CRC"
    pairs = data.split(b"\0\0", 1)[0].split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if p)


def _uboot_save(image: Path, env: dict[str, str]) -> None:
    """``saveenv``: variables NUL-separated, the rest zeroed, CRC32 in front."""
    data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in sorted(env.items())) + b"\0"
    data = data.ljust(UBOOT_ENV_SIZE - 4, b"\0")
    image.write_bytes(zlib.crc32(data).to_bytes(4, "little") + data)


def _run_script(script: str, env: dict[str, str], image: Path) -> None:
    """The few U-Boot commands ``altbootcmd`` uses: setenv (with ${var}), saveenv, run."""
    for command in (c.strip() for c in script.split(";")):
        words = command.split()
        if words[0] == "setenv":
            value = " ".join(words[2:])
            for name, current in list(env.items()):
                value = value.replace("${" + name + "}", current)
            env[words[1]] = value
        elif words[0] == "saveenv":
            _uboot_save(image, env)
        elif words[:2] == ["run", "bootcmd"]:
            return
        else:
            raise AssertionError(f"unexpected command in altbootcmd: {command}")


def uboot_boots(image: Path) -> str:
    env = _uboot_read(image)
    bootcount = int(env.get("bootcount", "0")) + 1
    if env.get("upgrade_available") == "1":  # bootcount_store() saves only then
        env["bootcount"] = str(bootcount)
        _uboot_save(image, env)
    bootlimit = int(env.get("bootlimit", "0"))
    if bootlimit and bootcount > bootlimit:
        _run_script(env["altbootcmd"], env, image)
    return env["edgefleet_slot"]


# -- the two boards ---------------------------------------------------------------------------


@dataclass
class Board:
    env: BootEnv
    boot: Callable[[], str]
    """One power-on: the bootloader picks a slot (and updates its environment)."""


def _grub_board(tmp_path: Path) -> Board:
    _need("grub-editenv", package="grub-common")
    path = tmp_path / "grubenv"
    env = GrubEnv(path)
    env.mark_good("A")
    return Board(env, lambda: grub_boots(path))


def _uboot_board(tmp_path: Path) -> Board:
    _need("fw_setenv", "fw_printenv", "mkenvimage", package="u-boot-tools")
    text, image = tmp_path / "env.txt", tmp_path / "uboot-env.img"
    text.write_text(
        "bootcmd=echo booting ${edgefleet_slot}\nbootlimit=3\nbootcount=0\n"
        f"upgrade_available=0\nedgefleet_slot=A\nedgefleet_good=A\naltbootcmd={ALTBOOTCMD}\n"
    )
    subprocess.run(
        ["mkenvimage", "-s", hex(UBOOT_ENV_SIZE), "-o", str(image), str(text)], check=True
    )
    config = tmp_path / "fw_env.config"
    config.write_text(f"{image} 0x0 {hex(UBOOT_ENV_SIZE)}\n")
    return Board(UBootEnv(config), lambda: uboot_boots(image))


@pytest.fixture(params=["grub", "u-boot"])
def board(request: pytest.FixtureRequest, tmp_path: Path) -> Board:
    return {"grub": _grub_board, "u-boot": _uboot_board}[request.param](tmp_path)


def test_a_slot_that_never_comes_up_falls_back_after_its_attempts(board: Board) -> None:
    board.env.set_next("B", 3)
    assert board.env.current() == "B" and board.env.boot_attempts == 3
    assert [board.boot() for _ in range(5)] == ["B", "B", "B", "A", "A"]
    assert board.env.current() == "A"
    assert board.env.boot_attempts == 0


def test_a_slot_that_comes_up_and_is_marked_good_stays(board: Board) -> None:
    board.env.set_next("B", 2)
    assert board.boot() == "B"
    board.env.mark_good("B")  # the health checks passed
    assert [board.boot() for _ in range(4)] == ["B"] * 4
    assert board.env.current() == "B" and board.env.boot_attempts == 0


def test_each_boot_spends_one_attempt(board: Board) -> None:
    board.env.set_next("B", 3)
    seen = []
    for _ in range(3):
        board.boot()
        seen.append(board.env.boot_attempts)
    assert seen == [2, 1, 0]


def test_an_attempt_the_agent_spends_itself_counts_like_a_boot(board: Board) -> None:
    board.env.set_next("B", 2)
    assert board.env.decrement_boot_attempts() == 1
    assert [board.boot(), board.boot()] == ["B", "A"]


def test_a_failed_trial_then_a_new_one_on_the_same_slot(board: Board) -> None:
    board.env.set_next("B", 1)
    assert [board.boot(), board.boot()] == ["B", "A"]
    board.env.set_next("B", 1)  # an operator retries
    assert board.boot() == "B"


def test_attempts_out_of_range_and_unknown_slots_are_refused(board: Board) -> None:
    with pytest.raises(ConfigError, match="1 to 9"):
        board.env.set_next("B", 0)
    with pytest.raises(ValueError, match="unknown slot"):
        board.env.set_next("C", 3)
    assert board.boot() == "A"
