"""Print commented TOML for schema sections or keys missing from conf/mailsrv.toml.

    .venv/bin/python tools/config_sample.py            # what is missing, ready to paste
    .venv/bin/python tools/config_sample.py SECTION    # one whole section

The sample stays hand-edited (production values, extra advice); this only
saves typing the doc strings and defaults of new keys.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailsrv.config import Config

SAMPLE = Path(__file__).resolve().parent.parent / "conf" / "mailsrv.toml"


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return repr(v)


def render(cls: type, name: str) -> list[str]:
    out = [f"[{name}]"]
    hints = get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        doc = f.metadata.get("doc", "")
        for line in textwrap.wrap(doc, 76):
            out.append(f"# {line}")
        if is_dataclass(tp):
            out.append(f"# (table [{name}.{f.name}], see below)")
            continue
        if get_origin(tp) is dict and is_dataclass(get_args(tp)[1]):
            sub = render(get_args(tp)[1], f"{name}.{f.name}.NAME")
            out.append("# one table per entry:")
            out += ["# " + line if line else "#" for line in sub]
            continue
        if f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            out.append(f"# {f.name} = (required)")
            continue
        if value is None:
            out.append(f"# {f.name} =")
        else:
            out.append(f"{f.name} = {toml_value(value)}")
    return out + [""]


def main() -> None:
    hints = get_type_hints(Config)
    text = SAMPLE.read_text()
    wanted = sys.argv[1:]
    for f in fields(Config):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        if not is_dataclass(tp):
            continue
        if wanted and f.name not in wanted:
            continue
        if not wanted and f"[{f.name}]" in text:
            continue
        print("\n".join(render(tp, f.name)))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
