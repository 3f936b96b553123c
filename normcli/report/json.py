"""JSON output: exactly the documented schema, no NaN or Infinity tokens."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol


class ToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def dumps(results: Sequence[ToDict]) -> str:
    """One document for one result, a list for several."""
    documents = [r.to_dict() for r in results]
    payload: Any = documents[0] if len(documents) == 1 else documents
    return json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
