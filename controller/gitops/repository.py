"""The one writer of the fleet repositories: Git objects and refs, no index, no work tree.

A write hashes the rendered files into blobs and trees in memory (the same bytes give the
same ids, so unchanged folders cost a dictionary lookup), stores only the objects the
repository lacks as loose objects (what ``git hash-object -w``/``mktree`` would write),
compares the new root tree with the branch's tree and commits only when they differ, then
moves the branch with a lock file and a compare-and-swap, as ``git update-ref`` does.
Reading history, restoring and pushing go through the ``git`` command itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMMITTER = "Edgefleet <edgefleet@localhost>"
_IDENT = re.compile(r"^\s*([^<>\n]+?)\s*<([^<>\n]+)>\s*$")
_CONFIG = b"[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
_MEMO = 1 << 20
_blob_ids: dict[bytes, str] = {}
_tree_ids: dict[bytes, str] = {}
"""Object id per content, for the process: rendered bytes are memoized, so the same bytes
object comes back and a lookup costs no hashing (bytes cache their hash)."""


class RepositoryError(RuntimeError):
    """A Git step failed; the message says which."""


@dataclass
class Changes:
    """Paths a write adds, modifies and removes, against the branch's previous tree."""

    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


Message = str | Callable[[Changes], str]


@dataclass
class Pending:
    """A commit whose objects are stored and whose branch has not moved yet."""

    repository: Repository
    commit: str
    parent: str | None
    tree: str
    paths: dict[str, str]
    files: dict[str, bytes]


_TYPES = {b"commit": 1, b"tree": 2, b"blob": 3}
PACK_MIN = 16
"""A write of at least this many new objects goes into one pack, fewer into loose objects
(git's own rule for fetches, ``fetch.unpackLimit``, is the same idea)."""

Obj = tuple[bytes, bytes]
"""(kind, body) of a Git object."""


def _oid(kind: bytes, body: bytes) -> str:
    return hashlib.sha1(b"%s %d\0%s" % (kind, len(body), body)).hexdigest()


def _pack(objects: dict[str, Obj]) -> tuple[bytes, bytes, str]:
    """A version 2 pack of whole (undeltified) objects and its version 2 index."""
    out = [b"PACK", struct.pack(">II", 2, len(objects))]
    offset = 12
    entries = []
    for oid, (kind, body) in objects.items():
        size = len(body)
        head = [(_TYPES[kind] << 4) | (size & 0x0F)]
        size >>= 4
        while size:
            head[-1] |= 0x80
            head.append(size & 0x7F)
            size >>= 7
        chunk = bytes(head) + zlib.compress(body, 1)
        entries.append((bytes.fromhex(oid), zlib.crc32(chunk), offset))
        out.append(chunk)
        offset += len(chunk)
    pack = b"".join(out)
    checksum = hashlib.sha1(pack).digest()
    pack += checksum
    entries.sort()
    fanout = [0] * 256
    for name, _, _ in entries:
        fanout[name[0]] += 1
    total = 0
    for i in range(256):
        total += fanout[i]
        fanout[i] = total
    index = b"".join(
        [
            b"\377tOc",
            struct.pack(">I", 2),
            struct.pack(">256I", *fanout),
            b"".join(name for name, _, _ in entries),
            struct.pack(f">{len(entries)}I", *(crc for _, crc, _ in entries)),
            struct.pack(f">{len(entries)}I", *(off for _, _, off in entries)),
            checksum,
        ]
    )
    index += hashlib.sha1(index).digest()
    return pack, index, checksum.hex()


def identity(who: str) -> str:
    """``Name <email>`` for a commit: ``who`` as given, or an operator name made into one."""
    match = _IDENT.match(who)
    if match:
        return f"{match[1]} <{match[2]}>"
    name = re.sub(r"[<>\n]+", "", who).strip() or "unknown"
    local = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    return f"{name} <{local}@edgefleet>"


class Repository:
    """One bare repository under the root (``<root>/<name>.git``) and its branch."""

    def __init__(self, path: Path, branch: str = "main") -> None:
        self.path = Path(path)
        self.branch = branch
        self._have: set[str] = set()
        self._head: str | None = None
        self._tree: str | None = None
        self._paths: dict[str, str] | None = None
        """path -> blob id of ``_tree``, when known."""
        self._files: dict[str, bytes] | None = None
        """The files last written (or found identical), for a fast no-change answer."""
        self.pushed: str | None = None
        """The commit this process last pushed to the remote."""

    # -- setup ------------------------------------------------------------------------

    @classmethod
    def ensure(cls, path: Path, branch: str = "main") -> Repository:
        """Open the bare repository at ``path``, creating it (as ``git init --bare``) if new."""
        path = Path(path)
        if not (path / "HEAD").exists():
            for sub in ("objects/info", "objects/pack", "refs/heads", "refs/tags"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            (path / "config").write_bytes(_CONFIG)
            (path / "description").write_bytes(b"Edgefleet fleet repository\n")
            head = path / "HEAD.tmp"
            head.write_bytes(f"ref: refs/heads/{branch}\n".encode())
            head.replace(path / "HEAD")
        return cls(path, branch)

    def git(self, *args: str, stdin: bytes | None = None) -> str:
        proc = subprocess.run(
            ["git", f"--git-dir={self.path}", *args],
            input=stdin,
            capture_output=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip()
            raise RepositoryError(f"git {args[0]} in {self.path} failed: {detail}")
        return proc.stdout.decode()

    # -- refs -------------------------------------------------------------------------

    @property
    def ref(self) -> str:
        return f"refs/heads/{self.branch}"

    def head(self) -> str | None:
        """The branch's commit, read from the ref file (or packed-refs); None before the first."""
        try:
            return (self.path / self.ref).read_text().strip() or None
        except FileNotFoundError:
            pass
        try:
            for line in (self.path / "packed-refs").read_text().splitlines():
                if line.endswith(" " + self.ref):
                    return line.split(" ", 1)[0]
        except FileNotFoundError:
            pass
        return None

    def _update_ref(self, new: str, old: str | None, durable: bool = True) -> None:
        """Move the branch from ``old`` to ``new`` under its lock file, as ``git update-ref``."""
        ref = os.path.join(self.path, self.ref)
        lock = ref + ".lock"
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError as exc:
            raise RepositoryError(f"{lock} exists: another writer holds the branch") from exc
        try:
            if self.head() != old:
                raise RepositoryError(f"{self.ref} in {self.path} moved under us; not updated")
            os.write(fd, f"{new}\n".encode())
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(lock)
            raise
        os.close(fd)
        os.replace(lock, ref)
        if durable:
            dirfd = os.open(os.path.dirname(ref), os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)

    def _tree_of(self, commit: str | None) -> str | None:
        if commit is None:
            return None
        if commit == self._head and self._tree is not None:
            return self._tree
        return self.git("rev-parse", f"{commit}^{{tree}}").strip()

    # -- objects ----------------------------------------------------------------------

    def _store(self, objects: dict[str, Obj]) -> None:
        """Write the objects the repository lacks: one pack when many, else loose objects.

        Nothing is synced here: the caller syncs once before any branch moves (a crash
        never leaves a ref to a missing object), far cheaper than an fsync per object.
        """
        new = {oid: obj for oid, obj in objects.items() if oid not in self._have}
        root = os.path.join(self.path, "objects")
        if len(new) >= PACK_MIN:
            pack, index, name = _pack(new)
            base = os.path.join(root, "pack", f"pack-{name}")
            for suffix, data in ((".pack", pack), (".idx", index)):  # the index last
                tmp = f"{base}{suffix}.tmp"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.chmod(tmp, 0o444)
                os.replace(tmp, base + suffix)
        else:
            for oid, (kind, body) in new.items():
                folder = os.path.join(root, oid[:2])
                target = os.path.join(folder, oid[2:])
                if os.path.exists(target):
                    continue
                os.makedirs(folder, exist_ok=True)
                tmp = os.path.join(folder, f"tmp_obj_{os.getpid()}_{oid[2:10]}")
                with open(tmp, "wb") as fh:
                    fh.write(zlib.compress(b"%s %d\0%s" % (kind, len(body), body), 1))
                os.chmod(tmp, 0o444)
                os.replace(tmp, target)
        self._have.update(new)

    def _build(self, files: dict[str, bytes]) -> tuple[str, dict[str, Obj], dict[str, str]]:
        """Root tree id, the objects making it up that the repository may lack, path -> blob."""
        if len(_blob_ids) + len(_tree_ids) > _MEMO:
            _blob_ids.clear()  # only a memo: a long-lived controller should not grow forever
            _tree_ids.clear()
        nested: dict[str, Any] = {}
        paths: dict[str, str] = {}
        objects: dict[str, Obj] = {}
        have = self._have
        for path, data in files.items():
            oid = _blob_ids.get(data)
            if oid is None:
                oid = _blob_ids[data] = _oid(b"blob", data)
            if oid not in have:
                objects[oid] = (b"blob", data)
            paths[path] = oid
            *folders, name = path.split("/")
            node = nested
            for part in folders:
                node = node.setdefault(part, {})
            node[name] = oid

        def tree(node: dict[str, Any]) -> str:
            entries = []
            for name, value in node.items():
                if isinstance(value, dict):
                    raw = b"40000 %s\0%s" % (name.encode(), bytes.fromhex(tree(value)))
                    entries.append((name + "/", raw))
                else:
                    raw = b"100644 %s\0%s" % (name.encode(), bytes.fromhex(value))
                    entries.append((name, raw))
            entries.sort()
            body = b"".join(entry for _, entry in entries)
            oid = _tree_ids.get(body)
            if oid is None:
                oid = _tree_ids[body] = _oid(b"tree", body)
            if oid not in have:
                objects[oid] = (b"tree", body)
            return oid

        return tree(nested), objects, paths

    # -- writing ----------------------------------------------------------------------

    def write(self, files: dict[str, bytes], message: Message, author: str) -> str | None:
        """Make the branch hold exactly ``files``: one commit, or None when nothing changed."""
        pending = self.stage(files, message, author)
        if pending is None:
            return None
        os.sync()
        return self.publish(pending)

    def stage(self, files: dict[str, bytes], message: Message, author: str) -> Pending | None:
        """Store the objects of a commit holding ``files``; None when the branch has them.

        The branch does not move until ``publish``: ``sync`` stages every repository,
        syncs the disk once, then publishes them all.
        """
        head = self.head()
        if head is not None and head == self._head and files == self._files:
            return None
        root, objects, paths = self._build(files)
        old_tree = self._tree_of(head)
        if root == old_tree:
            self._remember(head, root, paths, files)
            return None
        if callable(message):
            message = message(self._changes(old_tree, paths))
        commit, body = self._commit_object(root, head, message, identity(author))
        objects[commit] = (b"commit", body)
        self._store(objects)
        return Pending(self, commit, head, root, paths, files)

    def publish(self, pending: Pending, durable: bool = True) -> str:
        """Move the branch to a staged commit (its objects must be on disk by now)."""
        self._update_ref(pending.commit, pending.parent, durable)
        self._remember(pending.commit, pending.tree, pending.paths, pending.files)
        return pending.commit

    def _changes(self, old_tree: str | None, paths: dict[str, str]) -> Changes:
        old = self._paths if old_tree is not None and old_tree == self._tree else None
        if old is None:
            old = {}
            if old_tree is not None:
                for line in self.git("ls-tree", "-r", "-z", old_tree).split("\0"):
                    if line:
                        meta, path = line.split("\t", 1)
                        old[path] = meta.split()[2]
        return Changes(
            added=sorted(p for p in paths if p not in old),
            modified=sorted(p for p, oid in paths.items() if p in old and old[p] != oid),
            removed=sorted(p for p in old if p not in paths),
        )

    @staticmethod
    def _commit_object(
        tree: str, parent: str | None, message: str, author: str
    ) -> tuple[str, bytes]:
        stamp = f"{int(time.time())} +0000"
        lines = [f"tree {tree}"]
        if parent:
            lines.append(f"parent {parent}")
        lines += [f"author {author} {stamp}", f"committer {COMMITTER} {stamp}", ""]
        body = ("\n".join(lines) + "\n" + message.rstrip("\n") + "\n").encode()
        return _oid(b"commit", body), body

    def _remember(
        self,
        head: str | None,
        tree: str,
        paths: dict[str, str] | None,
        files: dict[str, bytes] | None,
    ) -> None:
        self._head, self._tree, self._paths, self._files = head, tree, paths, files

    # -- history ----------------------------------------------------------------------

    def log(self, n: int = 20) -> list[dict[str, str]]:
        """The branch's last ``n`` commits, newest first."""
        if self.head() is None:
            return []
        out = self.git("log", f"-n{n}", "--format=%H%x1f%an <%ae>%x1f%aI%x1f%s%x1f%b%x1e", self.ref)
        entries = []
        for record in out.split("\x1e"):
            record = record.strip("\n")
            if record:
                commit, author, date, subject, body = record.split("\x1f")
                entries.append(
                    {
                        "commit": commit,
                        "author": author,
                        "date": date,
                        "subject": subject,
                        "body": body.strip(),
                    }
                )
        return entries

    def commit_of(self, revision: str) -> tuple[str, str]:
        """The full id and subject of ``revision`` (a commit id, a prefix of one, a ref)."""
        try:
            commit = self.git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
        except RepositoryError as exc:
            raise RepositoryError(f"{revision!r} is not a commit of {self.path.name}") from exc
        commit = commit.strip()
        return commit, self.git("log", "-1", "--format=%s", commit).strip()

    def read(self, commit: str, under: str, name: str) -> dict[str, bytes]:
        """Every file called ``name`` below the folder ``under`` in ``commit``, by path."""
        listing = self.git("ls-tree", "-r", "-z", commit, "--", under.rstrip("/") + "/")
        wanted = []
        for line in listing.split("\0"):
            if line:
                meta, path = line.split("\t", 1)
                if path.rsplit("/", 1)[-1] == name:
                    wanted.append((path, meta.split()[2]))
        if not wanted:
            return {}
        proc = subprocess.run(
            ["git", f"--git-dir={self.path}", "cat-file", "--batch"],
            input="".join(f"{oid}\n" for _, oid in wanted).encode(),
            capture_output=True,
            check=True,
        )
        out, at = {}, 0
        for path, _ in wanted:
            header_end = proc.stdout.index(b"\n", at)
            size = int(proc.stdout[at:header_end].split()[2])
            out[path] = proc.stdout[header_end + 1 : header_end + 1 + size]
            at = header_end + 1 + size + 1
        return out

    def push(self, url: str) -> None:
        """Push the branch to ``url`` (fast-forward only: history is never rewritten).

        Remembers what was pushed, so that a push that failed is tried again by the next
        sync even when that sync makes no new commit."""
        head = self.head()
        if head is None or head == self.pushed:
            return
        self.git("push", "--quiet", url, f"{self.ref}:{self.ref}")
        self.pushed = head
