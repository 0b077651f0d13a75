"""What the agent sends: a round as the controller's ingest takes it, and batches of them.

The controller refuses step details longer than DETAIL_MAX and NUL characters
(controller.ingest.batch_body): they are made to fit here rather than cost the whole round.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from pathlib import PurePath
from typing import Any

from egresswatch.model import RoundResult, SourceKind
from egresswatch.report import step_document

__all__ = ["DETAIL_MAX", "batch_body", "batch_head", "encode_round"]

DETAIL_MAX = 4096


def encode_round(result: RoundResult) -> bytes:
    """The round as the controller's ingest takes it (target, source, started_at, steps as
    :func:`report.step_document`), JSON-encoded. Anything not JSON in the evidence becomes
    text, non-finite numbers null, NUL characters U+FFFD, and details are cut to DETAIL_MAX:
    the controller would refuse the whole round otherwise."""
    started = result.started_at.isoformat().replace("+00:00", "Z")
    steps = []
    for step in result.steps:
        document = step_document(step)
        document["detail"] = document["detail"][:DETAIL_MAX]
        steps.append(document)
    document = {
        "target": result.target,
        "source": result.source,
        "started_at": started,
        "steps": steps,
    }
    return json.dumps(_plain(document), ensure_ascii=False, allow_nan=False).encode()


def batch_head(source: str, source_kind: SourceKind | None, node: str | None = None) -> bytes:
    """The start of every batch body from this source (it never changes): an open object.
    `node` is the node the source runs on (a pod's NODE_NAME): every round of the batch ran
    there."""
    head: dict[str, Any] = {"source": source}
    if source_kind is not None:
        head["source_kind"] = source_kind.value
    if node is not None:
        head["source_node"] = node
    return json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1].encode()


def batch_body(head: bytes, batch_id: str, documents: Sequence[bytes]) -> bytes:
    """A batch as posted: `head` (from :func:`batch_head`), the batch id and the rounds, each
    already encoded by :func:`encode_round`."""
    return b"".join(
        (
            head,
            b',"batch_id":',
            json.dumps(batch_id).encode(),
            b',"rounds":[',
            b",".join(documents),
            b"]}",
        )
    )


def _plain(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        return _text(str(value))
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return _plain(value.value, depth + 1)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {_text(str(k)): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, Sequence | set | frozenset) and not isinstance(value, bytes):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, PurePath):
        return _text(str(value))
    return _text(str(value))


def _text(value: str) -> str:
    return value.replace("\0", "\ufffd") if "\0" in value else value
