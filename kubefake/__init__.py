"""An HTTP-level fake Kubernetes API server (kmock's emulator plus what the controller
relies on), for the controller's tests, the e2e-style scenarios and, later, the demo.

It is a package of its own, installed with the ``fake-api`` extra, so nothing under
``optimizer/`` depends on it and the demo can drive it without importing ``tests/``.
"""

from kubefake.server import FakeApiServer, serve

__all__ = ["FakeApiServer", "serve"]
