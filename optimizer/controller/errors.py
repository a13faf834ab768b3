"""Why an object cannot be read into the planner's terms (pure)."""

from __future__ import annotations


class SpecError(ValueError):
    """A pod's gang declaration or resources are malformed; the message is for a person."""


class MissingObjectError(SpecError):
    """A pod names an object (PodGroup, PyTorchJob, JobSet, ...) that is not there (yet).

    The webhook, which sees only the pod, cannot tell; the controller can."""
