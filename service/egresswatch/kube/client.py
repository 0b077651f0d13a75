"""The `kubernetes.aio` API client, built from a kubeconfig file or the in-cluster service
account. The controller alone talks to the API server; agents never do."""

from __future__ import annotations

from pathlib import Path

from kubernetes.aio import client, config

__all__ = ["KubeClientError", "close_client", "open_client"]


class KubeClientError(RuntimeError):
    """The client cannot be configured; the message names the kubeconfig or the in-cluster
    files."""


async def open_client(kubeconfig: Path | None, *, context: str | None = None) -> client.ApiClient:
    """An ApiClient for `kubeconfig` (its `context`, else the current one), or the in-cluster
    configuration (service-account token and CA, KUBERNETES_SERVICE_HOST) when it is None.

    The caller closes it (`await api.close()`).
    """
    configuration = client.Configuration()
    try:
        if kubeconfig is None:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig),
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (config.ConfigException, OSError) as exc:
        where = str(kubeconfig) if kubeconfig else "in-cluster service account"
        raise KubeClientError(
            f"kubernetes: cannot configure the client from {where}: {exc}"
        ) from exc
    return client.ApiClient(configuration)


async def close_client(api: client.ApiClient) -> None:
    """Close the client's connection pool (the generated `close` is untyped)."""
    await api.close()  # type: ignore[no-untyped-call]
