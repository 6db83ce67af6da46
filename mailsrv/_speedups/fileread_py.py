"""Reading message files whole (or their first octets): the specification of ``fileread_c``.

A message file does not change once in the store: its size bounds the read, one pread(2) (a buffered
``open().read()`` took twice the time: its objects, a second read(2) to see the end of the file, a
buffer of ``length`` when it is larger)."""

from __future__ import annotations

import os
from collections.abc import Sequence


def read_range(path: str | os.PathLike[str], offset: int, length: int | None) -> bytes:
    """Up to ``length`` octets (None: all) of the file from ``offset``. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        end = os.fstat(fd).st_size
        if length is not None:
            end = min(end, offset + length)
        want = end - offset
        if want <= 0:
            return b""
        data = os.pread(fd, want, offset)
        while len(data) < want:  # short: a signal, or the file shrank (then to its new end)
            more = os.pread(fd, want - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data
    finally:
        os.close(fd)


def read_files(paths: Sequence[str], limit: int) -> list[bytes | None]:
    """The first ``limit`` octets (negative: all) of each file of ``paths``, in order; None for a
    file that is not there (ENOENT). Any other error raises OSError (naming its file) once every
    file opened was closed."""
    out: list[bytes | None] = []
    for path in paths:
        try:
            out.append(read_range(path, 0, None if limit < 0 else limit))
        except FileNotFoundError:
            out.append(None)
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise OSError(exc.errno, exc.strerror, path) from None  # os.pread's error names no file
    return out
