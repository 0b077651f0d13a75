"""Who the agent is and how it reaches the controller: identity (Downward API environment or
flags), the controller's URL and the bearer token file.

Errors are :class:`UsageError`, whose message names the flag or the variable.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from egresswatch.model import SourceKind, pod_source_name

__all__ = [
    "SourceIdentity",
    "TokenFile",
    "UsageError",
    "check_controller_url",
    "resolve_identity",
]

log = logging.getLogger(__name__)

ENV_KIND = "EGRESSWATCH_SOURCE_KIND"
ENV_POD_NAME, ENV_POD_NAMESPACE, ENV_NODE_NAME = "POD_NAME", "POD_NAMESPACE", "NODE_NAME"
# The designated workload a pod agent stands for (the chart sets it to its Deployment's name):
# with it, a pod source is NAMESPACE/WORKLOAD@NODE and survives a rollout (model.pod_source_name).
ENV_WORKLOAD = "EGRESSWATCH_WORKLOAD"
NAME_MAX = 253  # the controller's limit on a source name


class UsageError(ValueError):
    """Bad flags or environment; the message names the flag or the variable."""


# -- identity -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceIdentity:
    name: str
    kind: SourceKind
    node: str | None = None  # NODE_NAME: the node a pod ran on, carried with its batches


def resolve_identity(
    *, source: str | None, kind: str | None, environ: Mapping[str, str]
) -> SourceIdentity:
    """Who this agent is. Flags win over the environment.

    - `--source NAME` needs a kind: `--source-kind`, else EGRESSWATCH_SOURCE_KIND.
    - Otherwise the kind is `--source-kind`, else EGRESSWATCH_SOURCE_KIND, else what the
      Downward API variables say (POD_NAME: pod; NODE_NAME alone: node; both: ambiguous).
    - A pod is `POD_NAMESPACE/EGRESSWATCH_WORKLOAD@NODE_NAME` when EGRESSWATCH_WORKLOAD is set
      (a designated pod source: the name the controller expects, kube/sources.py), else
      `POD_NAMESPACE/POD_NAME`; a node is `NODE_NAME`.

    UsageError names the flag or variable that is missing or wrong.
    """
    chosen_kind = _kind(kind, "--source-kind") or _kind(environ.get(ENV_KIND), ENV_KIND)
    pod, node = environ.get(ENV_POD_NAME, "").strip(), environ.get(ENV_NODE_NAME, "").strip()
    on = _checked(node, ENV_NODE_NAME) if node else None
    if source is not None:
        if chosen_kind is None:
            raise UsageError(f"--source needs --source-kind pod|node (or {ENV_KIND}=pod|node)")
        return SourceIdentity(_checked(source.strip(), "--source"), chosen_kind, on)
    if chosen_kind is None:
        if pod and node:
            raise UsageError(
                f"both {ENV_POD_NAME} and {ENV_NODE_NAME} are set: say which this agent is "
                f"with {ENV_KIND}=pod|node (or --source-kind)"
            )
        if not pod and not node:
            raise UsageError(
                f"no identity: set {ENV_POD_NAME} and {ENV_POD_NAMESPACE} (a pod) or "
                f"{ENV_NODE_NAME} (a node) through the Downward API, or pass "
                "--source NAME --source-kind pod|node"
            )
        chosen_kind = SourceKind.POD if pod else SourceKind.NODE
    if chosen_kind is SourceKind.POD:
        namespace = environ.get(ENV_POD_NAMESPACE, "").strip()
        missing = [n for n, v in ((ENV_POD_NAMESPACE, namespace), (ENV_POD_NAME, pod)) if not v]
        if missing:
            raise UsageError(
                f"a pod source needs {' and '.join(missing)} set (Downward API), or --source NAME"
            )
        workload = environ.get(ENV_WORKLOAD, "").strip()
        if workload:
            if not node:
                raise UsageError(
                    f"{ENV_WORKLOAD} names a designated pod source, which needs {ENV_NODE_NAME} "
                    "(Downward API spec.nodeName)"
                )
            name = pod_source_name(namespace, workload, node)
            return SourceIdentity(_checked(name, ENV_WORKLOAD), SourceKind.POD, on)
        return SourceIdentity(_checked(f"{namespace}/{pod}", ENV_POD_NAME), SourceKind.POD, on)
    if not node:
        raise UsageError(
            f"a node source needs {ENV_NODE_NAME} set (Downward API), or --source NAME"
        )
    return SourceIdentity(_checked(node, ENV_NODE_NAME), SourceKind.NODE, on)


def _kind(value: str | None, origin: str) -> SourceKind | None:
    if value is None or not value.strip():
        return None
    try:
        return SourceKind(value.strip().lower())
    except ValueError:
        raise UsageError(f"{origin}: {value!r} is not a source kind: use pod or node") from None


def _checked(name: str, origin: str) -> str:
    if not name or len(name) > NAME_MAX or not name.isprintable():
        raise UsageError(f"{origin}: a source name is 1 to {NAME_MAX} printable characters")
    return name


# -- flags ----------------------------------------------------------------------------------------


def check_controller_url(url: str) -> str:
    """The controller's base URL, without a trailing slash; UsageError names --controller."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--controller: {url!r} is not http(s)://HOST[:PORT]")
    try:
        _ = parts.port
    except ValueError:
        raise UsageError(f"--controller: {url!r} has a bad port") from None
    if parts.query or parts.fragment or parts.username is not None:
        raise UsageError(f"--controller: {url!r}: no query, fragment or credentials in the URL")
    return url.strip().rstrip("/")


class TokenFile:
    """The bearer token, read from a file and read again when the file changes (a rotated
    Kubernetes Secret), so a new token is used without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._token: str | None = None
        self._stamp: tuple[int, int] | None = None

    def load(self) -> str:
        """Read it now; UsageError naming --token-file when it cannot be read or is empty."""
        try:
            info = self.path.stat()
            token = self.path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise UsageError(f"--token-file: cannot read {self.path}: {reason}") from None
        if not token:
            raise UsageError(f"--token-file: {self.path} is empty")
        self._token, self._stamp = token, (info.st_mtime_ns, info.st_size)
        return token

    def __call__(self) -> str | None:
        """The current token; a file that went bad keeps the last good token (logged)."""
        try:
            info = self.path.stat()
            if (info.st_mtime_ns, info.st_size) != self._stamp:
                self.load()
                log.info("token file read", extra={"path": str(self.path)})
        except (OSError, UsageError) as exc:
            log.warning("token file unreadable: the last token stays", extra={"problem": str(exc)})
            # Remember the failure: one warning per change of the file, not one per batch.
            with contextlib.suppress(OSError):
                info = self.path.stat()
                self._stamp = (info.st_mtime_ns, info.st_size)
        return self._token
