"""Writing files so that a reader never sees half of one (write a temporary file beside it, then rename), and the
checks every command makes before its work: an output must not be one of its inputs, nor replace a file without
--exist-ok, and its folder must take a new file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from tedloc_edge.errors import UserError, first_line


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(fh)` on a temporary file in the same folder, then rename: readers never see a half-written
    file, and an interrupted write (or one that raises) leaves the old file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | os.PathLike) -> str:
    """A model file's digest: the build record's ``onnx_sha256``, and the key of ORT's TensorRT engine caches."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_output(path: Path, exist_ok: bool, fix: str, probed: set[Path] | None = None) -> Path:
    """Before any work: refuse to replace an existing file unless exist_ok, and make sure the folder (made when
    missing) takes a new file and an existing `path` can be written. `fix` ends every message ("choose another
    --out folder"); `probed` holds the folders already tried, so a thousand outputs cost one probe per folder."""
    if path.is_dir():
        raise UserError(f"{path}: is a folder where an output file goes; remove it or {fix}")
    if path.exists() and not exist_ok:
        raise UserError(f"{path}: already exists; pass --exist-ok to replace it, or {fix}")
    folder, what = path.parent, "output folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if probed is None or folder not in probed:
            with tempfile.TemporaryFile(dir=folder, prefix=".tedloc-write-test-"):
                pass
            if probed is not None:
                probed.add(folder)
        if path.exists():
            what = "output file"
            open(path, "r+b").close()  # changes nothing; fails on a file that cannot be written
    except OSError as exc:
        where = path if what == "output file" else folder
        raise UserError(f"{where}: {what} is not writable ({exc.strerror or first_line(exc)}); fix its permissions "
                        f"or {fix}") from None
    return path


def check_not_inputs(outputs: Iterable[Path], inputs: Iterable[Path], fix: str) -> None:
    """An output that is one of the inputs (by file identity: a link or another spelling counts) is refused,
    --exist-ok or not: writing it would destroy what the command reads."""
    ids = {}
    for path in inputs:
        try:
            st = Path(path).stat()
        except OSError:
            continue
        ids[(st.st_dev, st.st_ino)] = path
    for path in outputs:
        try:
            st = Path(path).stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in ids:
            raise UserError(f"{path}: is an input of this run ({ids[(st.st_dev, st.st_ino)]}); an output there would "
                            f"replace it (--exist-ok never replaces an input); {fix}")
