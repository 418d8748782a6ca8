"""Strict JSON out: every file we write must parse with any JSON reader.

Python's ``json`` writes NaN and Infinity as bare ``NaN`` / ``Infinity`` tokens, which are not JSON
(jq, JavaScript and pandas' strict mode reject them). A missing or undefined number is ``null`` here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Union


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
    """Writes ``obj`` to ``path`` as strict JSON (see ``dumps_finite``) with a trailing newline."""
    Path(path).write_text(dumps_finite(obj, **kwargs) + "\n")
