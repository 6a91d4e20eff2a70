"""ext2/3/4 partitions through ``debugfs -w`` on ``IMAGE?offset=N``: no mount, no root.

debugfs reads its commands from a script and exits 0 whatever happens, so every path is
looked at before the write (a symlink or a folder in the way is refused, not followed)
and every message on stderr after it is an error; the caller then reads the file back.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from edgefleet.errors import ConfigError
from edgefleet.imaging import tools
from edgefleet.imaging.partitions import Partition

MODE = 0o600


def _device(link: Path, part: Partition) -> str:
    # e2fsprogs' unix I/O manager takes options after "?"; offset= is how mkfs.ext4 -E
    # offset= and debugfs reach a file system inside a disk image.
    return f"{link}?offset={part.start}"


def _stat(device: str, path: str) -> tuple[str, int] | None:
    """(type, mode) of ``path`` without following a final symlink; None if absent."""
    done = tools.run(["debugfs", "-R", f"stat {path}", device], f"looking at {path}", check=False)
    found = re.search(r"Type:\s+(\S+)\s+Mode:\s+(\d+)", done.stdout)
    if found is None:
        if "not found" in done.stderr:
            return None
        raise ConfigError(f"debugfs could not read {path}: {done.stderr.strip()}")
    return found.group(1), int(found.group(2), 8)


def write(link: Path, part: Partition, fs_path: PurePosixPath, source: Path) -> None:
    device, where = _device(link, part), f"partition {part.number}"
    script: list[str] = []
    current = ""
    for component in fs_path.parts[:-1]:
        current += "/" + component
        found = None if script else _stat(device, current)
        if found is None:
            script += [f"mkdir {current}", f"sif {current} uid 0", f"sif {current} gid 0"]
        elif found[0] != "directory":
            raise ConfigError(
                f"{current} in {where} is a {found[0]}, not a folder; choose another --path"
            )
    target = f"/{fs_path}"
    found = _stat(device, target) if not script else None
    if found is not None:
        if found[0] != "regular":
            raise ConfigError(f"{target} in {where} is a {found[0]}; choose another --path")
        script.append(f"rm {target}")
    script += [
        f"write {source} {target}",
        f"sif {target} mode 0{0o100000 | MODE:o}",
        f"sif {target} uid 0",
        f"sif {target} gid 0",
    ]
    commands = source.parent / "debugfs.commands"
    commands.write_text("\n".join(script) + "\n")
    done = tools.run(["debugfs", "-w", "-f", commands, device], f"writing {target} into {where}")
    lines = done.stderr.splitlines()
    problems = [line for line in lines if line.strip() and not line.startswith("debugfs ")]
    if problems:
        raise ConfigError(f"writing {target} into {where} failed: {'; '.join(problems)}")


def read(link: Path, part: Partition, fs_path: PurePosixPath) -> bytes | None:
    device = _device(link, part)
    if _stat(device, f"/{fs_path}") is None:
        return None
    done = tools.run(["debugfs", "-R", f"cat /{fs_path}", device], "debugfs", text=False)
    return done.stdout


def mode(link: Path, part: Partition, fs_path: PurePosixPath) -> int | None:
    found = _stat(_device(link, part), f"/{fs_path}")
    return None if found is None else found[1]
