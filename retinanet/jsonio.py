"""Writing files: atomically, and JSON strictly, so that every file we write is whole and parses
with any JSON reader.

Python's ``json`` writes NaN and Infinity as bare ``NaN`` / ``Infinity`` tokens, which are not JSON
(jq, JavaScript and pandas' strict mode reject them). A missing or undefined number is ``null`` here.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

TMP_SUFFIX = ".tmp"


def atomic_write(path: Union[str, Path], write: Callable[[Path], None]) -> None:
    """Calls ``write`` on a temp file in ``path``'s folder, then renames it over ``path``: a reader
    (or another process writing the same file) sees the old file or the new one, never half of one.
    A failed write leaves no temp file. The temp file is ``<name>.<random>.tmp``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-Inf), however deeply nested, replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps_finite(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes non-finite floats as ``null``; ``allow_nan=False`` guards the rest."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def write_json(path: Union[str, Path], obj: Any, **kwargs: Any) -> None:
    """Writes ``obj`` to ``path`` atomically as strict JSON (see ``dumps_finite``) with a trailing newline."""
    text = dumps_finite(obj, **kwargs) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
