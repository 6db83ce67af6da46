"""The journal's records (storage.encode_record, its JSON encoder made once) are byte for byte what
``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)`` makes, and read back as written."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mailsrv.search import storage

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
#: the records the service writes: an add (uid, text offset and length, the sort columns), an expunge
_ADD = st.fixed_dictionaries({"a": st.integers(0, 2**32), "o": st.integers(0, 2**40), "l": st.integers(0, 2**31),
                              "c": st.lists(_SCALARS, max_size=9)})
_EXPUNGE = st.fixed_dictionaries({"x": st.lists(st.integers(0, 2**32), max_size=20)})


@given(_ADD | _EXPUNGE | st.recursive(_SCALARS, lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids)))
def test_encode_record_is_json_dumps(obj: object) -> None:
    rec = storage.encode_record(obj)
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert rec == storage._REC.pack(len(payload), zlib.crc32(payload)) + payload


def test_records_read_back(tmp_path: Path) -> None:
    path = tmp_path / "log"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        recs = [{"a": 7, "o": 0, "l": 40, "c": [1.5, "Ann", "ann@x", "", "", "", "re: q", False, None]},
                {"x": [7, 8]}, {"a": 9, "o": 40, "l": 3, "c": [None, "\u00e9\u4e2d\"\\\n", "", "", "", "", "", True, 1]}]
        os.write(fd, storage.log_header(5) + b"".join(storage.encode_record(r) for r in recs))
        got, _, stale = storage.read_log(fd, 5, len(storage.log_header(5)))
    finally:
        os.close(fd)
    assert not stale
    assert got == recs
