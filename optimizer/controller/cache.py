"""An in-memory cache of nodes and pods kept current by watches (client-go's informers, small).

Each :class:`Informer` lists its resource once, then watches from the list's resourceVersion,
applying ADDED/MODIFIED/DELETED events; a watch that ends is restarted from the last version
seen, and a 410 (version too old) or an error relists. Stored objects are replaced, never
changed in place, so :meth:`Informer.items` (a list of the current objects) is a snapshot a
planning cycle can hold while events keep arriving.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

import structlog

from optimizer.controller.kube import GoneError, KubeApi

log = structlog.get_logger(__name__)

WATCH_TIMEOUT_S: Final = 300
RETRY_S: Final = 2.0

Lister = Callable[[], tuple[list[dict[str, Any]], str]]
Watcher = Callable[..., Iterator[tuple[str, dict[str, Any]]]]


class ClusterView(Protocol):
    """Where the controller reads nodes and pods from."""

    def nodes(self) -> list[dict[str, Any]]: ...

    def pods(self) -> list[dict[str, Any]]: ...


class LiveView:
    """Reads straight from the API server on every call (tests, tools, small clusters)."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api

    def nodes(self) -> list[dict[str, Any]]:
        return self._api.list_nodes()

    def pods(self) -> list[dict[str, Any]]:
        return self._api.list_pods()


def _key(obj: Any) -> tuple[str | None, str] | None:
    """The object's (namespace, name), or None for an object without them (kept out of the
    cache and logged: one bad object must not stop the watch)."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not meta.get("name"):
        log.warning("object without a name left out of the cache", object=str(obj)[:200])
        return None
    return meta.get("namespace"), str(meta["name"])


class Informer:
    """One resource's list-then-watch cache."""

    def __init__(self, name: str, lister: Lister, watcher: Watcher) -> None:
        self.name = name
        self._lister = lister
        self._watcher = watcher
        self._items: dict[tuple[str | None, str], dict[str, Any]] = {}
        self._version = ""
        self._lock = threading.Lock()
        self.synced = threading.Event()

    def items(self) -> list[dict[str, Any]]:
        """The objects as of now."""
        with self._lock:
            return list(self._items.values())

    def relist(self) -> None:
        """Replace the cache with a fresh list."""
        items, version = self._lister()
        keyed = {key: item for item in items if (key := _key(item)) is not None}
        with self._lock:
            self._items = keyed
            self._version = version
        self.synced.set()

    def watch_once(self, *, timeout_seconds: int = WATCH_TIMEOUT_S) -> int:
        """Apply one watch's events until the server ends it; returns how many."""
        applied = 0
        for kind, obj in self._watcher(
            resource_version=self._version or None, timeout_seconds=timeout_seconds
        ):
            key = _key(obj)
            with self._lock:
                if key is not None and kind == "DELETED":
                    self._items.pop(key, None)
                elif key is not None and kind in ("ADDED", "MODIFIED"):
                    self._items[key] = obj
                version = (obj.get("metadata") or {}).get("resourceVersion") if key else None
                if version:
                    self._version = version
            applied += 1
        return applied

    def run(self, stop: threading.Event, *, timeout_seconds: int = WATCH_TIMEOUT_S) -> None:
        """List, then watch until ``stop``; relist after a 410 or a failure."""
        needs_list = True
        while not stop.is_set():
            try:
                if needs_list:
                    self.relist()
                    needs_list = False
                self.watch_once(timeout_seconds=timeout_seconds)
            except GoneError:
                log.info("watch version too old; relisting", resource=self.name)
                needs_list = True
            except Exception:
                log.exception("watch failed; relisting", resource=self.name)
                needs_list = True
                stop.wait(RETRY_S)


class ClusterCache:
    """Nodes and pods, watched. Start it, wait for :meth:`wait_synced`, then read."""

    def __init__(self, api: KubeApi, *, timeout_seconds: int = WATCH_TIMEOUT_S) -> None:
        self._informers = (
            Informer("nodes", api.list_nodes_versioned, api.watch_nodes),
            Informer("pods", api.list_pods_versioned, api.watch_pods),
        )
        self._timeout = timeout_seconds
        self._threads: list[threading.Thread] = []

    def start(self, stop: threading.Event) -> None:
        for informer in self._informers:
            thread = threading.Thread(
                target=informer.run,
                args=(stop,),
                kwargs={"timeout_seconds": self._timeout},
                name=f"watch-{informer.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def wait_synced(self, timeout: float) -> bool:
        """True once every informer has listed."""
        return all(informer.synced.wait(timeout) for informer in self._informers)

    def nodes(self) -> list[dict[str, Any]]:
        return self._informers[0].items()

    def pods(self) -> list[dict[str, Any]]:
        return self._informers[1].items()
