"""Message file reads: the compiled batch reader loads when required and agrees with its twin (contents,
limits, missing files, errors naming their file, short reads)."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from speedups.guard import implementations, selector_output, speedups_off

from mailsrv._speedups import fileread_py

pytestmark = pytest.mark.speedups

CODE = "import mailsrv._speedups.fileread as s; print(s.IMPLEMENTATION, s.read_files.__module__)"
IMPLS = implementations("fileread")


def test_compiled_fileread_loads_when_required() -> None:
    if speedups_off():
        assert selector_output(CODE, {"MAILSRV_NO_SPEEDUPS": "1"}).split()[0] == "py"
        return
    assert selector_output(CODE, {"MAILSRV_REQUIRE_SPEEDUPS": "1"}) == "c mailsrv._speedups.fileread_c"


def test_no_speedups_forces_the_twin() -> None:
    assert selector_output(CODE, {"MAILSRV_NO_SPEEDUPS": "1"}) == "py mailsrv._speedups.fileread_py"


@pytest.fixture(params=IMPLS, ids=lambda m: m.__name__.rsplit("_", 1)[-1])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


def test_read_files_examples(impl: ModuleType, tmp_path: Path) -> None:
    big = bytes(range(256)) * 1200  # 300 KiB: past one pread of a small buffer
    files = {"a": b"From: a\r\n\r\nhello\r\n", "empty": b"", "big": big}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / n) for n in ("a", "gone", "empty", "big")]
    assert impl.read_files(paths, -1) == [files["a"], None, b"", big]
    assert impl.read_files(paths, 5) == [b"From:", None, b"", big[:5]]
    assert impl.read_files(paths, 0) == [b"", None, b"", b""]
    assert impl.read_files([], -1) == []
    assert impl.read_files([tmp_path / "a"], -1) == [files["a"]]  # a path object too
    with pytest.raises(IsADirectoryError) as err:
        impl.read_files([paths[0], str(tmp_path)], -1)
    assert err.value.filename == str(tmp_path)
    (tmp_path / "locked").write_bytes(b"x")
    os.chmod(tmp_path / "locked", 0)
    if os.geteuid() != 0:  # root reads it anyway
        with pytest.raises(PermissionError):
            impl.read_files([str(tmp_path / "locked")], -1)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        impl.read_files(paths, -1)
        with pytest.raises(IsADirectoryError):
            impl.read_files([paths[3], str(tmp_path), paths[0]], -1)
    assert len(os.listdir("/proc/self/fd")) == before  # every descriptor closed, errors or not


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.none(), st.binary(max_size=3000)), max_size=8), st.integers(-1, 4000))
def test_read_files_agree(tmp_path: Path, contents: list[bytes | None], limit: int) -> None:
    paths = []
    for i, data in enumerate(contents):
        path = tmp_path / f"m{i}"
        path.unlink(missing_ok=True)
        if data is not None:
            path.write_bytes(data)
        paths.append(str(path))
    results = [m.read_files(paths, limit) for m in IMPLS]
    want = [None if d is None else (d if limit < 0 else d[:limit]) for d in contents]
    assert all(r == want for r in results)


def test_read_range_offsets_lengths_and_short_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(range(256)) * 40
    path = tmp_path / "m"
    path.write_bytes(data)
    for offset in (0, 1, 255, len(data) - 1, len(data), len(data) + 7):
        for length in (None, 0, 1, 100, len(data), 1 << 20):
            want = data[offset:] if length is None else data[offset:offset + length]
            assert fileread_py.read_range(path, offset, length) == want
            assert fileread_py.read_range(str(path), offset, length) == want
    # pread(2) may return fewer octets than asked (a signal): the read goes on to the end
    real = os.pread
    monkeypatch.setattr(fileread_py.os, "pread", lambda fd, n, off: real(fd, min(n, 1000), off))
    assert fileread_py.read_range(path, 3, None) == data[3:]
    assert fileread_py.read_range(path, 3, 5000) == data[3:5003]
    assert fileread_py.read_files([str(path)], -1) == [data]
