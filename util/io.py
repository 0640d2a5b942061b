"""Files in and out, each done one way everywhere: output folders checked before any work, files written
atomically, torch files read without running pickled code, and image files opened under one pixel limit.

Atomic writes. A file is first written to a temporary file beside its target (`temporary_path`: hidden,
named after the writing process, so two writers never share one), flushed to disk, and then renamed over
the target (`os.replace` is atomic on POSIX): a reader sees the old file or the new one, never a mix, and a
kill or a full disk mid-write leaves the previous file intact. A failed write removes its temporary file;
only a killed process leaves one (`.<name>.<pid>.tmp`, which the next run may delete).

torch and PIL are imported where they are used: the report and splits tools use this module without them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from util.errors import OutputError

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from PIL import Image

# PIL's decompression-bomb guard (Image.MAX_IMAGE_PIXELS, about 89 M pixels by default) protects servers
# from hostile uploads. The images read here are the user's own data, and remote-sensing scenes are large
# (a Potsdam tile holds 36 M pixels, other orthophotos several times more), so there is no limit: a file
# is refused only when it cannot be read. Set by `open_image`, where images are opened.
MAX_IMAGE_PIXELS = None

# What stands in for that guard: a header is not believed when the pixels it declares could not come out of a
# file that size. Lossless codecs top out near 1,000:1 on real images (deflate's ceiling is about 1,032:1) and
# a few 10,000:1 on constant ones (zstd); a damaged TIFF of 1.5 KB that declared 24 x 1,979,711,508 pixels made
# PIL allocate 15 GB and spend a minute before it failed. Small images are never refused: below the floor the
# worst case is a short, bounded allocation.
MAX_DECODED_RATIO = 100_000
DECODED_FLOOR_BYTES = 1 << 30


def check_output_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` as a folder that exists or can be created and written to; else one OutputError naming `what`.

    Nothing is created here: a command refused later for another reason leaves no folder behind.
    """
    path = Path(path).expanduser()
    check_name_lengths(path, what)
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{what} {path} is a broken symbolic link")
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"{what} {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{what} {path} is not writable")
        return path
    ancestor = existing_ancestor(path)
    if not ancestor.is_dir():
        raise OutputError(f"{what} {path} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path} cannot be created: {ancestor} is not writable")
    return path


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a file that can be written (atomically, through `temporary_path`): its folder as
    `check_output_folder` checks it, the path no folder, and the name short enough for its temporary name too."""
    path = Path(path).expanduser()
    check_name_lengths(path, what, file=True)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; name the file to write in it")
    check_output_folder(path.parent, f"{what}'s folder")
    return path


def existing_ancestor(path: Path) -> Path:
    """The nearest of `path` and its parents (made absolute) that exists."""
    ancestor = path.absolute()
    # lexists is False for a name too long to look up as for a missing one: the walk goes on to its parent.
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError, AttributeError):  # not POSIX, or the file system does not say
        return default


def check_name_lengths(path: str | os.PathLike, what: str, file: bool = False) -> None:
    """One OutputError where a part of `path` is longer than its file system allows (NAME_MAX bytes, usually
    255), or the whole path longer than PATH_MAX; with `file`, the last part must leave room for its temporary
    name (`temporary_path`), which is written first.

    Without this the first write fails with ENAMETOOLONG, after the work, or as a traceback from a lookup.
    """
    path = Path(path)
    ancestor = existing_ancestor(path)
    name_max = _limit(ancestor if ancestor.is_dir() else ancestor.parent, "PC_NAME_MAX", 255)
    parts = path.parts
    for i, part in enumerate(parts):
        size, room, why = len(os.fsencode(part)), name_max, ""
        if file and i == len(parts) - 1:
            extra = len(os.fsencode(temporary_path(part).name)) - size
            room, why = name_max - extra, f" (its limit {name_max}, less {extra} for the temporary name written first)"
        if size > room:
            shown = part if len(part) <= 40 else f"{part[:20]}...{part[-12:]}"
            raise OutputError(f"{what}: the name '{shown}' is {size} bytes, more than the {room} this file system "
                              f"allows{why}; give a shorter name")
    path_max = _limit(ancestor if ancestor.is_dir() else ancestor.parent, "PC_PATH_MAX", 4096)
    size = len(os.fsencode(str(path.absolute())))
    if size >= path_max:
        raise OutputError(f"{what}: the path is {size} bytes long, more than the {path_max - 1} this file system "
                          f"allows; give a shorter one")


# ----------------------------------------------------------------------------------------------------------
# Atomic writes


def temporary_path(target: str | os.PathLike) -> Path:
    """Where `target` is written before it is renamed into place: `.<name>.<pid>.tmp` in the same folder."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is named like a `temporary_path`: what a killed writer leaves behind."""
    parts = Path(path).name.split(".")
    return len(parts) >= 4 and parts[0] == "" and parts[-1] == "tmp" and parts[-2].isdigit()


def writer_pid(path: str | os.PathLike) -> int | None:
    """The process id a temporary file names (`.<name>.<pid>.tmp`, or a file a library derived from one, such as
    GDAL's `.<name>.<pid>.tmp.ovr.tmp` beside it); None for any other file."""
    parts = Path(path).name.split(".")
    if parts[0] != "":
        return None
    pids = [int(parts[i - 1]) for i in range(2, len(parts)) if parts[i] == "tmp" and parts[i - 1].isdigit()]
    return pids[0] if pids else None


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files in `folder` whose writer is gone (killed mid-write); returns how many.

    A temporary file names its writer's process id (`writer_pid`): one of a process that still runs (a
    concurrent writer into the same folder) is left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        pid = writer_pid(path)
        if pid is not None and path.is_file() and not process_alive(pid):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def atomic_paths(targets: Iterable[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths for `targets`, to be written inside the block; on success each is flushed to disk and
    renamed over its target, on any failure all are removed and the targets are left as they were."""
    paths = [Path(t) for t in targets]
    temporary = [temporary_path(t) for t in paths]
    try:
        yield temporary
        commit(temporary, paths)
    except BaseException:
        for path in temporary:
            path.unlink(missing_ok=True)
        raise


def commit(temporary: list[Path], targets: list[Path]) -> None:
    """Flush the written `temporary` files to disk and rename each over its target (the end of `atomic_paths`,
    for writers that keep their files open across calls and name them with `temporary_path`)."""
    for path in temporary:
        _fsync(path)
    for path, target in zip(temporary, targets):
        os.replace(path, target)
    for folder in dict.fromkeys(Path(target).parent for target in targets):
        _fsync(folder)  # the renames are only durable once the folders' entries are on disk


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """One temporary path for `target` (see `atomic_paths`): write it inside the block."""
    with atomic_paths([target]) as (path,):
        yield path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically; a failure (a full disk) is one OutputError and `path` is unchanged."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise OutputError(f"could not write {path}: {e.strerror or e}; the previous file is unchanged") from None


def write_files(folder: str | os.PathLike, files: dict[str, bytes]) -> list[Path]:
    """Write `files` ({name: contents}) into `folder`, made if needed, together: all of them appear complete or
    none does (what a failure started is removed, files already there stay as they were). A failure (a full disk,
    a quota, a read-only folder) is one OutputError naming the folder, the files and the reason."""
    folder = Path(folder)
    paths = [folder / name for name in files]
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        with atomic_paths(paths) as temporary:
            for tmp, data in zip(temporary, files.values()):
                tmp.write_bytes(data)
    except OSError as e:
        if created:
            with suppress(OSError):
                folder.rmdir()
        raise OutputError(f"could not write {', '.join(files)} into {folder}: {e.strerror or e}; none of them was "
                          f"written") from None
    return paths


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def png_bytes(array: Any, text: dict[str, str] | None = None) -> bytes:
    """A uint8 (H, W), (H, W, 3) or (H, W, 4) numpy array encoded as PNG, with `text` as its metadata (UTF-8 iTXt
    chunks: what `Image.open(path).text` and `exiftool` show)."""
    import io

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    encoded = io.BytesIO()
    Image.fromarray(array).save(encoded, format="PNG", pnginfo=info)
    return encoded.getvalue()


def save_png(array: Any, path: str | os.PathLike, text: dict[str, str] | None = None) -> None:
    """Write `png_bytes(array, text)` to `path` atomically (failures as in write_bytes)."""
    write_bytes(path, png_bytes(array, text))


def _fsync(path: Path) -> None:
    # A folder cannot be opened for writing, and fsync needs no write access: open read-only.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return  # a folder that cannot be opened (some platforms): the rename is as durable as it gets
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# Reading


def torch_load(path: str | os.PathLike, map_location: Any = "cpu", allow: Iterable[Any] = ()) -> Any:
    """torch.load that never runs code from the pickle: weights_only=True, onto `map_location` (the CPU by
    default); `allow` names further types the file may rebuild (torch.serialization.safe_globals).

    Errors propagate as torch raises them: each caller words its own, naming what the file was meant to be.
    """
    import torch

    allow = list(allow)
    if not allow:
        return torch.load(path, map_location=map_location, weights_only=True)
    with torch.serialization.safe_globals(allow):
        return torch.load(path, map_location=map_location, weights_only=True)


# torch.save writes a zip archive; its older format (before torch 1.6, or _use_new_zipfile_serialization=False)
# opens with this pickle of its magic number, then four more pickles (protocol, system info, the object, the
# storage keys) and the storages' bytes.
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def torch_file_damage(path: str | os.PathLike, error: BaseException) -> str | None:
    """Why a torch file that `torch_load` could not read is damaged or incomplete ('damaged or incomplete (...)',
    for the caller's 'checkpoint X is ...'); None where the file looks whole, so that the failure is its
    content (another project's pickle, another format)."""
    import zipfile

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_TORCH_MAGIC))
            cut_pickles = head == LEGACY_TORCH_MAGIC and _pickles_end_early(f, 4)
    except OSError:
        return None
    why = None
    if size == 0:
        why = "the file is empty"
    elif size < len(LEGACY_TORCH_MAGIC) and (ZIP_MAGIC.startswith(head[:4]) or LEGACY_TORCH_MAGIC.startswith(head)):
        why = f"only the first {size} bytes of a torch file"
    elif head.startswith(ZIP_MAGIC) and not zipfile.is_zipfile(path):
        # torch.save writes a zip archive whose directory is its last bytes: a cut file has none.
        why = f"a zip archive of {size:,} bytes whose end is missing"
    elif head == LEGACY_TORCH_MAGIC and (cut_pickles or "unexpected EOF" in str(error)):
        why = f"torch's older format, ending early at {size:,} bytes"
    return f"damaged or incomplete ({why}: an interrupted copy, download or save?)" if why else None


def _pickles_end_early(f: Any, count: int) -> bool:
    """Whether the file ends before `count` more whole pickles (read as opcodes: nothing is unpickled)."""
    import pickletools

    try:
        for _ in range(count):
            for _ in pickletools.genops(f):
                pass
    except ValueError:  # pickletools' word for bytes that end inside an opcode or before STOP
        return True
    return False


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (a checkpoint, a split list, a downloaded weight file), read in 1 MB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def open_image(path: str | os.PathLike) -> Image.Image:
    """PIL's Image.open under this project's pixel limit (MAX_IMAGE_PIXELS), refusing a header that declares
    more pixels than its file could hold (OSError); other errors propagate as PIL's."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    im = Image.open(path)
    try:
        _check_declared_size(im, os.path.getsize(path))
    except BaseException:
        im.close()
        raise
    return im


def _check_declared_size(im: Image.Image, file_bytes: int) -> None:
    import numpy as np
    from PIL import ImageMode

    try:
        itemsize = np.dtype(ImageMode.getmode(im.mode).typestr).itemsize
    except (KeyError, TypeError):  # a mode without a numpy type: PIL's own checks apply
        return
    decoded = im.width * im.height * len(im.getbands()) * itemsize
    if decoded > DECODED_FLOOR_BYTES and decoded > MAX_DECODED_RATIO * max(file_bytes, 1):
        raise OSError(f"damaged header: it declares {im.width} x {im.height} pixels ({decoded / 2**30:.0f} GiB "
                      f"decoded) in a file of {file_bytes:,} bytes")


# ----------------------------------------------------------------------------------------------------------
# Folder locks


class FolderLock:
    """An exclusive lock on `folder` for the life of its holder: <folder>/<name> locked with flock.

    flock locks belong to the open file, so the kernel releases them when the process dies, however it dies:
    a killed holder never leaves the folder locked. The lock file holds the holder's process id and is
    removed on release; a process that opened it just before is told apart by its inode and locks the new
    file instead. On file systems without flock (some network mounts) nothing is locked.
    `busy(pid)` words the one-line error for a folder another process holds.
    """

    def __init__(self, folder: str | os.PathLike, name: str, busy: Callable[[str], str]) -> None:
        self.path = Path(folder) / name
        self.fd: int | None = None
        while fcntl is not None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(f"cannot create the lock file {self.path}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise OutputError(busy(holder if holder.isdigit() else "unknown")) from None
            except OSError:  # no flock here
                os.close(fd)
                return
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (opened.st_ino, opened.st_dev):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
                return
            os.close(fd)  # the holder removed this file as we opened it: lock the one now there

    def release(self) -> None:
        """Remove the lock file and unlock (in that order, so that no one locks a file about to go)."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
