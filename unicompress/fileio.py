"""Atomic file and directory writes: a crash never leaves a half-written output behind.

Every output is written beside its final path under a temporary name, flushed to disk (fsync), then renamed
over the final path in one step, and the directory holding it is fsynced so the rename survives a power cut.
Modes follow the process umask like any ordinary file (a file rewritten in place keeps its mode). Temporary
names carry the writer's host and process id, so the next write to the same path removes the leftovers of a
writer that was killed (``kill -9``) and never cleaned up.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
from pathlib import Path
from typing import Iterator, Optional, Union

#: temporary names: ``.<name>.<host><pid>-<token>.tmp[<suffix>]`` (the name cut so the whole stays short)
_TMP = re.compile(r"^\.(?P<base>.*)\.(?P<host>[0-9a-f]{4})(?P<pid>\d+)-[0-9a-z]{8}\.(?:tmp|old)")
_BASE_CHARS = 60


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:4]


def _temp_name(path: Path, kind: str = "tmp") -> Path:
    suffix = path.suffix if kind == "tmp" and len(path.suffix) <= 16 else ""
    token = "".join(secrets.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(8))
    return path.with_name(f".{path.name[:_BASE_CHARS]}.{_host_tag()}{os.getpid()}-{token}.{kind}{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or cannot tell: keep its files
    return True


def remove_stale_temporaries(path: Union[str, Path]) -> list[Path]:
    """Delete the temporary files and folders a killed writer left beside `path`; returns what was removed.

    Only names this module makes for `path`, written on this host by a process that no longer runs, are
    touched. Called by every atomic write, so leftovers live at most until the next write of the same path.
    """
    path = Path(path)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    host = _host_tag()
    for entry in entries:
        match = _TMP.match(entry.name)
        if not match or match["base"] != path.name[:_BASE_CHARS] or match["host"] != host:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        stale = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed.append(stale)
        except OSError:
            pass
    return removed


def _fsync_path(path: Path) -> None:
    """Flush a file or folder to disk (folders: so a rename inside them is durable)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the data itself was synced
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


def _create_temp_file(path: Path) -> tuple[Path, int]:
    """A new empty temporary file beside `path`, created with mode 0666 minus the umask; (path, mode)."""
    for _ in range(100):
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        os.close(fd)
        return tmp, mode
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def _create_temp_dir(path: Path) -> tuple[Path, int]:
    """A new temporary folder beside `path`, created with mode 0777 minus the umask; (path, mode)."""
    for _ in range(100):
        tmp = _temp_name(path)
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return tmp, stat.S_IMODE(os.stat(tmp).st_mode)
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def _final_mode(path: Path, umask_mode: int) -> int:
    """The mode the output gets: the replaced file's own mode, else the umask's."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return umask_mode


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`.

    Example: ``atomic_write_bytes("weights.bin", payload)``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:  # which fsyncs the file before renaming it
        with open(tmp, "wb") as fh:
            fh.write(data)
    return path


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _refuse_directory_target(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the file to write; move it or choose "
                                "another name", str(path))


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it to `path`, on error delete it.

    Example::

        with atomic_path("model.onnx") as tmp:
            torch.onnx.export(model, x, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _refuse_directory_target(path)
    remove_stale_temporaries(path)
    tmp, umask_mode = _create_temp_file(path)
    try:
        yield tmp
        _fsync_path(tmp)
        os.chmod(tmp, _final_mode(path, umask_mode))  # a writer may have recreated it with its own mode
        os.replace(tmp, path)
        _fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # old kernel or a file system without exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_directory(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` whole, in one step.

    On Linux the old and the new folder are exchanged atomically (renameat2), so a reader always sees one
    complete folder; elsewhere the old one is renamed away first (a short window without either).
    Example::

        with atomic_directory("out/model.torch") as tmp:
            save_everything_into(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of the folder to write; move it or choose "
                                 "another name", str(path))
    remove_stale_temporaries(path)
    tmp, umask_mode = _create_temp_dir(path)
    old: Optional[Path] = None
    try:
        yield tmp
        _fsync_tree(tmp)
        os.chmod(tmp, _final_mode(path, umask_mode))
        if path.exists() and _exchange(tmp, path):
            _fsync_path(path.parent)
            _remove(tmp)  # now the old folder
        else:
            if path.exists():
                old = _temp_name(path, "old")
                os.replace(path, old)
            os.replace(tmp, path)
            _fsync_path(path.parent)
    finally:
        if old is not None:
            _remove(old)
        if tmp.exists():
            _remove(tmp)
