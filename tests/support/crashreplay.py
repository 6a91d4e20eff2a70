"""What a power cut could leave on disk, from a writer's recorded system calls.

The way ALICE and CrashMonkey test crash consistency: run the writer once under
``strace``, keep every file-system call it made under one folder, then build
the states a crash after call K could leave. Everything a later ``fsync``
covered before K is on the medium; of the rest, any subset may be (a page
written back early, a journal commit), so each crash point is tried with none,
all, a random prefix and random subsets of the unsynced calls, and in those
subsets a write may be torn (only some of its 512-byte sectors written). Rules:

- a write or truncate is durable once its file is fsynced;
- a directory entry (create, mkdir, rename, unlink) is durable once its
  *directory* is fsynced: fsync of a new file alone does not make its name
  durable (POSIX does not promise it, whatever ext4 does);
- a rename moves one inode atomically: it may persist before the creation of
  its source name, but never half-way.

Every call that writes and that the model does not know (``sendfile``,
``writev``, ``mmap``...) fails the recording, and the full replay must equal the
folder the writer really left, so nothing the writer did is missed.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MARKER_DIR = "/edgefleet-crash-marker"
"""A writer opens ``MARKER_DIR/<label>`` (which fails) to mark a point in its trace."""

TRACED = (
    "open,openat,creat,write,pwrite64,lseek,ftruncate,truncate,fsync,fdatasync,sync,syncfs,"
    "rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,rmdir,close,"
    "writev,pwritev,pwritev2,sendfile,copy_file_range,fallocate,link,linkat,symlink,symlinkat"
)
UNMODELLED = {
    "writev",
    "pwritev",
    "pwritev2",
    "sendfile",
    "copy_file_range",
    "fallocate",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
}
LINE = re.compile(r"^(\w+)\((.*)\) += (.*)$")
HEX = re.compile(rb"\\x([0-9a-f]{2})")
ROOT_INO = 0


class Unmodelled(Exception):
    """The writer did something to the folder that the crash model cannot replay."""


# -- operations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One recorded call; ``dir`` is the folder whose entries it changes, ``ino`` the file
    whose data it changes."""

    kind: str  # create, mkdir, write, truncate, rename, unlink, fsync, sync, marker
    ino: int = -1
    dir: int = -1
    name: str = ""
    dst_dir: int = -1
    dst_name: str = ""
    offset: int = 0
    data: bytes = b""
    label: str = ""

    def __repr__(self) -> str:
        what = {
            "write": f"{len(self.data)} bytes at {self.offset}",
            "truncate": f"to {self.offset}",
        }
        where = f"{self.name} -> {self.dst_name}" if self.kind == "rename" else self.name
        detail = what.get(self.kind) or self.label or where
        return f"{self.kind}(inode {self.ino}, {detail})"

    @property
    def is_data(self) -> bool:
        return self.kind in ("write", "truncate")

    @property
    def is_entry(self) -> bool:
        return self.kind in ("create", "mkdir", "rename", "unlink")


@dataclass
class Tree:
    """Inodes: file contents and folder entries; ``ROOT_INO`` is the recorded folder."""

    files: dict[int, bytearray] = field(default_factory=dict)
    dirs: dict[int, dict[str, int]] = field(default_factory=lambda: {ROOT_INO: {}})

    def copy(self) -> Tree:
        return Tree(
            {k: bytearray(v) for k, v in self.files.items()},
            {k: dict(v) for k, v in self.dirs.items()},
        )

    def apply(self, op: Op) -> None:
        if op.kind == "create":
            self.files.setdefault(op.ino, bytearray())
            self.dirs.setdefault(op.dir, {})[op.name] = op.ino
        elif op.kind == "mkdir":
            self.dirs.setdefault(op.ino, {})
            self.dirs.setdefault(op.dir, {})[op.name] = op.ino
        elif op.kind == "write":
            buf = self.files.setdefault(op.ino, bytearray())
            if len(buf) < op.offset:
                buf.extend(bytes(op.offset - len(buf)))
            buf[op.offset : op.offset + len(op.data)] = op.data
        elif op.kind == "truncate":
            buf = self.files.setdefault(op.ino, bytearray())
            del buf[op.offset :]
            buf.extend(bytes(op.offset - len(buf)))
        elif op.kind == "rename":
            entries = self.dirs.setdefault(op.dir, {})
            if entries.get(op.name) == op.ino:
                del entries[op.name]
            self.dirs.setdefault(op.dst_dir, {})[op.dst_name] = op.ino
        elif op.kind == "unlink":
            entries = self.dirs.setdefault(op.dir, {})
            if entries.get(op.name) == op.ino:
                del entries[op.name]

    def apply_sectors(self, op: Op, rng: random.Random) -> None:
        """A torn write: each sector of ``op`` reached the medium, or did not."""
        end = op.offset + len(op.data)
        start = op.offset
        while start < end:
            stop = min((start // SECTOR + 1) * SECTOR, end)
            if rng.random() < 0.5:
                part = op.data[start - op.offset : stop - op.offset]
                self.apply(Op("write", ino=op.ino, offset=start, data=part))
            start = stop

    def lookup(self, rel: str) -> int | None:
        ino: int | None = ROOT_INO
        for part in [p for p in rel.split("/") if p]:
            if ino not in self.dirs:
                return None
            ino = self.dirs[ino].get(part)
        return ino

    def walk(self, ino: int = ROOT_INO, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(relative path, inode) of everything reachable, folders before their content."""
        for name, child in sorted(self.dirs.get(ino, {}).items()):
            path = f"{prefix}{name}"
            yield path, child
            if child in self.dirs:
                yield from self.walk(child, path + "/")

    def signature(self) -> str:
        h = hashlib.sha256()
        for path, ino in self.walk():
            h.update(path.encode() + b"\0")
            h.update(b"D" if ino in self.dirs else hashlib.sha256(self.files[ino]).digest())
        return h.hexdigest()

    def materialise(self, dest: Path) -> Path:
        """Write the reachable tree under ``dest`` (emptied first); returns ``dest``."""
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for path, ino in self.walk():
            if ino in self.dirs:
                (dest / path).mkdir()
            else:
                (dest / path).write_bytes(self.files[ino])
        return dest


def scan(root: Path) -> Tree:
    """The folder as it is now, all of it durable: the state a recording starts from."""
    tree, by_path, next_ino = Tree(), {root: ROOT_INO}, 1
    for folder, dirnames, filenames in os.walk(root):
        parent = by_path[Path(folder)]
        for name in sorted(dirnames):
            by_path[Path(folder) / name] = next_ino
            tree.dirs[next_ino] = {}
            tree.dirs[parent][name] = next_ino
            next_ino += 1
        for name in sorted(filenames):
            tree.files[next_ino] = bytearray((Path(folder) / name).read_bytes())
            tree.dirs[parent][name] = next_ino
            next_ino += 1
    return tree


# -- recording -------------------------------------------------------------------------------


@dataclass
class Recording:
    base: Tree
    ops: list[Op]
    final: Tree
    """The replay of every call: equal to the folder the writer left (checked)."""

    def marker_index(self, label: str) -> int:
        return next(i for i, op in enumerate(self.ops) if op.kind == "marker" and op.label == label)


def record(script: str, root: Path, args: tuple[str, ...] = (), timeout: float = 120) -> Recording:
    """Run ``python -c script *args`` under strace; the calls it made under ``root``."""
    root = root.resolve()
    if shutil.which("strace") is None:
        raise FileNotFoundError("strace")
    base = scan(root)
    log = root.parent / f"{root.name}.strace"
    strace = ["strace", "-qq", "-y", "-xx", "-s", str(1 << 24), "-e", f"trace={TRACED}"]
    done = subprocess.run(
        [*strace, "-o", str(log), sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=root.parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the recorded writer failed:\n{done.stdout}\n{done.stderr}")
    parser = _Parser(root, base.copy())
    for line in log.read_bytes().splitlines():
        parser.feed(line)
    log.unlink()
    final = parser.tree
    if final.signature() != scan(root).signature():
        raise Unmodelled("replaying every recorded call does not give the folder the writer left")
    return Recording(base, parser.ops, final)


def _decode(token: str) -> bytes:
    raw = token.encode()
    if raw.startswith(b'"'):
        if not raw.endswith(b'"'):
            raise Unmodelled(f"strace cut a string short: {token[:60]}")
        raw = raw[1:-1]
    return HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def _args(text: str) -> list[str]:
    """Top-level arguments: strings and paths are all hex, so only commas separate."""
    return [a.strip() for a in text.split(", ")]


def _fd_path(token: str) -> tuple[str, str | None]:
    """``3</path>`` -> ("3", "/path"); ``AT_FDCWD</cwd>`` -> ("AT_FDCWD", "/cwd")."""
    m = re.match(r"^([\w-]+)<(.*)>$", token)
    if not m:
        return token, None
    return m.group(1), _decode(m.group(2)).decode("utf-8", "surrogateescape")


@dataclass
class _Fd:
    ino: int
    pos: int = 0


class _Parser:
    def __init__(self, root: Path, tree: Tree) -> None:
        self.root = str(root)
        self.tree = tree
        self.ops: list[Op] = []
        self.fds: dict[str, _Fd] = {}
        self.next_ino = max([*tree.files, *tree.dirs]) + 1

    # paths ---------------------------------------------------------------------------------

    def _rel(self, path: str) -> str | None:
        path = os.path.normpath(path)
        if path == self.root:
            return ""
        if path.startswith(self.root + "/"):
            return path[len(self.root) + 1 :]
        return None

    def _join(self, dirfd: str | None, path: str) -> str:
        if path.startswith("/") or dirfd is None:
            return path
        _, base = _fd_path(dirfd)
        if base is None:
            raise Unmodelled(f"no folder for {dirfd}")
        return os.path.join(base, path)

    def _entry(self, rel: str) -> tuple[int, str]:
        parent_rel, _, name = rel.rpartition("/")
        parent = self.tree.lookup(parent_rel)
        if parent is None or parent not in self.tree.dirs:
            raise Unmodelled(f"{rel}: its folder is not in the model")
        return parent, name

    def _emit(self, op: Op) -> None:
        self.ops.append(op)
        self.tree.apply(op)

    def _new_ino(self) -> int:
        self.next_ino += 1
        return self.next_ino

    # calls -----------------------------------------------------------------------------------

    def feed(self, raw: bytes) -> None:
        m = LINE.match(raw.decode("ascii", "surrogateescape"))
        if not m:
            return  # signals, exit lines
        call, args, result = m.group(1), _args(m.group(2)), m.group(3)
        if call in ("open", "creat"):
            args = ["AT_FDCWD", *args]
        if call in ("open", "openat", "creat"):
            path = _decode(args[1]).decode("utf-8", "surrogateescape")
            if path.startswith(MARKER_DIR + "/"):
                self._emit(Op("marker", label=path[len(MARKER_DIR) + 1 :]))
                return
        if result.startswith("-1"):
            return
        handler = getattr(self, f"_{call}", None)
        if call in UNMODELLED:
            self._unmodelled(call, args)
        elif handler is not None:
            handler(args, result)

    def _unmodelled(self, call: str, args: list[str]) -> None:
        for token in args:
            fd, path = _fd_path(token)
            text = path or _decode(token).decode("utf-8", "surrogateescape")
            if fd in self.fds or self._rel(text) is not None:
                raise Unmodelled(f"{call} on the recorded folder: {args}")

    def _openat(self, args: list[str], result: str) -> None:
        fd, real = _fd_path(result)
        rel = self._rel(real or "")
        self.fds.pop(fd, None)
        if rel is None:
            return
        flags = args[2]
        ino = self.tree.lookup(rel)
        if ino is None:
            if "O_CREAT" not in flags:
                raise Unmodelled(f"{rel} opened but not in the model")
            parent, name = self._entry(rel)
            ino = self._new_ino()
            self._emit(Op("create", ino=ino, dir=parent, name=name))
        elif "O_TRUNC" in flags and ino in self.tree.files:
            self._emit(Op("truncate", ino=ino, offset=0))
        if "O_APPEND" in flags:
            raise Unmodelled(f"{rel} opened with O_APPEND")
        self.fds[fd] = _Fd(ino)

    _open = _openat
    _creat = _openat

    def _tracked(self, token: str) -> _Fd | None:
        fd, path = _fd_path(token)
        state = self.fds.get(fd)
        if state is None and path is not None and self._rel(path) is not None:
            raise Unmodelled(f"a call on {path} through a descriptor the model did not see open")
        return state

    def _write(self, args: list[str], result: str) -> None:
        state = self._tracked(args[0])
        if state is not None:
            data = _decode(args[1])[: int(result)]
            self._emit(Op("write", ino=state.ino, offset=state.pos, data=data))
            state.pos += len(data)

    def _pwrite64(self, args: list[str], result: str) -> None:
        state = self._tracked(args[0])
        if state is not None:
            data = _decode(args[1])[: int(result)]
            self._emit(Op("write", ino=state.ino, offset=int(args[3]), data=data))

    def _lseek(self, args: list[str], result: str) -> None:
        fd, _ = _fd_path(args[0])
        if fd in self.fds:
            self.fds[fd].pos = int(result)

    def _ftruncate(self, args: list[str], result: str) -> None:
        state = self._tracked(args[0])
        if state is not None:
            self._emit(Op("truncate", ino=state.ino, offset=int(args[1])))

    def _truncate(self, args: list[str], result: str) -> None:
        rel = self._rel(_decode(args[0]).decode())
        if rel is not None:
            self._emit(Op("truncate", ino=self.tree.lookup(rel), offset=int(args[1])))  # type: ignore[arg-type]

    def _fsync(self, args: list[str], result: str) -> None:
        fd, path = _fd_path(args[0])
        rel = self._rel(path or "")
        if fd in self.fds:
            self._emit(Op("fsync", ino=self.fds[fd].ino))
        elif rel is not None:
            raise Unmodelled(f"fsync of {path} through an unseen descriptor")

    _fdatasync = _fsync

    def _sync(self, args: list[str], result: str) -> None:
        self._emit(Op("sync"))

    _syncfs = _sync

    def _close(self, args: list[str], result: str) -> None:
        self.fds.pop(_fd_path(args[0])[0], None)

    def _rename_paths(self, src: str, dst: str) -> None:
        src_rel, dst_rel = self._rel(src), self._rel(dst)
        if src_rel is None and dst_rel is None:
            return
        if src_rel is None or dst_rel is None:
            raise Unmodelled(f"rename across the recorded folder's edge: {src} -> {dst}")
        sdir, sname = self._entry(src_rel)
        ddir, dname = self._entry(dst_rel)
        ino = self.tree.dirs[sdir][sname]
        if sdir == ddir:
            self._emit(Op("rename", ino=ino, dir=sdir, name=sname, dst_dir=ddir, dst_name=dname))
        else:  # two folders: each one's entry is durable with that folder
            self._emit(Op("rename", ino=ino, dir=-1, name="", dst_dir=ddir, dst_name=dname))
            self._emit(Op("unlink", ino=ino, dir=sdir, name=sname))

    def _rename(self, args: list[str], result: str) -> None:
        self._rename_paths(*(_decode(a).decode() for a in args[:2]))

    def _renameat(self, args: list[str], result: str) -> None:
        if len(args) > 4 and "RENAME_EXCHANGE" in args[4]:
            raise Unmodelled("renameat2 with RENAME_EXCHANGE")
        self._rename_paths(
            self._join(args[0], _decode(args[1]).decode()),
            self._join(args[2], _decode(args[3]).decode()),
        )

    _renameat2 = _renameat

    def _remove(self, path: str) -> None:
        rel = self._rel(path)
        if rel is not None:
            parent, name = self._entry(rel)
            self._emit(Op("unlink", ino=self.tree.dirs[parent][name], dir=parent, name=name))

    def _unlink(self, args: list[str], result: str) -> None:
        self._remove(_decode(args[0]).decode())

    _rmdir = _unlink

    def _unlinkat(self, args: list[str], result: str) -> None:
        self._remove(self._join(args[0], _decode(args[1]).decode()))

    def _mkdir_path(self, path: str) -> None:
        rel = self._rel(path)
        if rel is not None:
            parent, name = self._entry(rel)
            self._emit(Op("mkdir", ino=self._new_ino(), dir=parent, name=name))

    def _mkdir(self, args: list[str], result: str) -> None:
        self._mkdir_path(_decode(args[0]).decode())

    def _mkdirat(self, args: list[str], result: str) -> None:
        self._mkdir_path(self._join(args[0], _decode(args[1]).decode()))


# -- crash states ----------------------------------------------------------------------------


def durable(ops: list[Op], k: int) -> list[bool]:
    """For each of the first ``k`` calls: is it on the medium whatever else was lost?"""
    synced_files: set[int] = set()
    synced_dirs: set[int] = set()
    everything = False
    out = [False] * k
    for i in range(k - 1, -1, -1):  # walk back: a call is durable if a later fsync covers it
        op = ops[i]
        if op.kind == "sync":
            everything = True
        elif op.kind == "fsync":
            synced_files.add(op.ino)
            synced_dirs.add(op.ino)
        elif op.is_data:
            out[i] = everything or op.ino in synced_files
        elif op.is_entry:
            folder = op.dst_dir if op.kind == "rename" else op.dir
            out[i] = everything or folder in synced_dirs
        else:
            out[i] = True  # fsync, sync, markers: nothing to lose
    return out


@dataclass(frozen=True)
class CrashState:
    k: int
    """Calls 0..k-1 were made; the crash came before call k."""
    how: str
    tree: Tree


SECTOR = 512
"""What a disk writes atomically: an unsynced write may reach the medium in any subset of
its sectors."""


def crash_states(rec: Recording, rng: random.Random, subsets: int = 8) -> Iterator[CrashState]:
    """For every crash point: durable calls only, all calls, a random prefix and random
    subsets of the unsynced ones (where a write may be torn: only some of its sectors
    written); each distinct tree once."""
    seen: set[str] = set()
    for k in range(len(rec.ops) + 1):
        keep = durable(rec.ops, k)
        loose = [i for i in range(k) if not keep[i]]
        choices: list[tuple[str, set[int], bool]] = [
            ("synced only", set(), False),
            ("all", set(loose), False),
        ]
        if loose:
            cut = rng.randrange(len(loose) + 1)
            choices.append((f"prefix {cut}/{len(loose)}", set(loose[:cut]), False))
            for n in range(subsets):
                picked = {i for i in loose if rng.random() < 0.5}
                choices.append((f"subset {n}, writes torn", picked, True))
        for how, extra, tear in choices:
            tree = rec.base.copy()
            for i in range(k):
                op = rec.ops[i]
                if keep[i]:
                    tree.apply(op)
                elif i in extra and tear and op.kind == "write" and rng.random() < 0.5:
                    tree.apply_sectors(op, rng)
                elif i in extra:
                    tree.apply(op)
            sig = tree.signature()
            if sig not in seen:
                seen.add(sig)
                yield CrashState(k, how, tree)
