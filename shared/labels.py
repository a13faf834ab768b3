"""Kubernetes label and annotation keys Stowage owns, and the apimachinery rules for them.

Stowage writes node labels only under :data:`PREFIX` and never touches another prefix
(``nvidia.com/`` belongs to GPU Feature Discovery). Every key and value is checked here
before any adapter sends it, so a bad value is refused in our process, not by the API server.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

PREFIX: Final = "stowage.io/"

# Node labels published from agent reports.
NODE_GPU_PRODUCT: Final = PREFIX + "gpu.product"
NODE_GPU_COUNT: Final = PREFIX + "gpu.count"
NODE_GPU_MEMORY_MIB: Final = PREFIX + "gpu.memory-mib"
NODE_NVLINK_ISLAND_SIZE: Final = PREFIX + "nvlink.largest-island"
NODE_NUMA_COUNT: Final = PREFIX + "numa.count"
NODE_GPU_CLIQUE: Final = PREFIX + "gpu.clique"
NODE_GPU_HEALTH: Final = PREFIX + "gpu.health"
NODE_POOL: Final = PREFIX + "pool"

NODE_LABEL_KEYS: Final = (
    NODE_GPU_PRODUCT,
    NODE_GPU_COUNT,
    NODE_GPU_MEMORY_MIB,
    NODE_NVLINK_ISLAND_SIZE,
    NODE_NUMA_COUNT,
    NODE_GPU_CLIQUE,
    NODE_GPU_HEALTH,
    NODE_POOL,
)

# Namespace opt-in and the gang vocabulary on pods (labels or annotations).
NAMESPACE_ENABLED: Final = PREFIX + "enabled"
GANG: Final = PREFIX + "gang"
GANG_SIZE: Final = PREFIX + "gang-size"
GANG_MAX: Final = PREFIX + "gang-max"
GANG_TIMEOUT: Final = PREFIX + "gang-timeout"
#: How long the job is expected to run (seconds, or 90m, 2h, 1d), as Slurm's time limit:
#: backfill reserves room for a waiting gang by the running jobs' expected ends.
RUNTIME_ESTIMATE: Final = PREFIX + "runtime-estimate"
QUEUE: Final = PREFIX + "queue"
#: When the job last saved a checkpoint (RFC 3339), written by the job on any of its pods:
#: preemption counts only the work since then as lost.
LAST_CHECKPOINT: Final = PREFIX + "last-checkpoint"
#: ``"false"`` on a pod: never evict it for holding idle GPUs (STOWAGE_IDLE_RECLAIM_AFTER_S).
IDLE_RECLAIM: Final = PREFIX + "idle-reclaim"
#: On a workload (Deployment, Job, PyTorchJob, ...): Stowage's right-sizing recommendations
#: for it, a JSON list (written by the leader; removed when none is left).
RIGHTSIZING: Final = PREFIX + "rightsizing"
#: On a JobSet: ``jobset`` (one gang, the default) or ``replicated-job`` (one per replicated job).
GANG_SCOPE: Final = PREFIX + "gang-scope"
TOPOLOGY_REQUIRED: Final = PREFIX + "topology-required"
TOPOLOGY_PREFERRED: Final = PREFIX + "topology-preferred"
NON_PREEMPTIBLE: Final = PREFIX + "non-preemptible"

#: The scheduling gate that holds gang pods until the whole gang has room.
SCHEDULING_GATE: Final = PREFIX + "gang"

#: Compatibility with scheduler-plugins' coscheduling ``PodGroup``.
POD_GROUP_LABEL: Final = "scheduling.x-k8s.io/pod-group"

HOSTNAME_LABEL: Final = "kubernetes.io/hostname"

NAME_MAX_LENGTH: Final = 63
PREFIX_MAX_LENGTH: Final = 253
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_LABEL_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_INVALID_VALUE_CHARS_RE: Final = re.compile(r"[^A-Za-z0-9_.-]+")
_HASH_LENGTH: Final = 10


class LabelError(ValueError):
    """A label key or value breaks the Kubernetes rules; the message says which rule."""


def label_key_errors(key: str) -> list[str]:
    """Every way ``key`` breaks the apimachinery qualified-name rules (empty if valid)."""
    errors: list[str] = []
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            errors.append("prefix part must be non-empty")
        elif len(prefix) > PREFIX_MAX_LENGTH:
            errors.append(f"prefix part must be no more than {PREFIX_MAX_LENGTH} characters")
        elif not all(_DNS_LABEL_RE.match(part) for part in prefix.split(".")):
            errors.append("prefix part must be a lowercase RFC 1123 subdomain")
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > NAME_MAX_LENGTH:
        errors.append(f"name part must be no more than {NAME_MAX_LENGTH} characters")
    elif not _NAME_RE.match(name):
        errors.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return errors


def label_value_errors(value: str) -> list[str]:
    """Every way ``value`` breaks the apimachinery label-value rules (empty if valid)."""
    if value == "":
        return []
    if len(value) > NAME_MAX_LENGTH:
        return [f"must be no more than {NAME_MAX_LENGTH} characters"]
    if not _NAME_RE.match(value):
        return [
            "must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        ]
    return []


def validate_label_or_raise(key: str, value: str) -> None:
    """Raise :class:`LabelError` naming the key if the pair may not be sent to Kubernetes."""
    if errors := label_key_errors(key):
        raise LabelError(f"invalid label key {key!r}: {'; '.join(errors)}")
    if errors := label_value_errors(value):
        raise LabelError(f"invalid value {value!r} for label {key!r}: {'; '.join(errors)}")


def is_owned_key(key: str) -> bool:
    """True for keys under Stowage's prefix: the only node labels Stowage may write or remove."""
    return key.startswith(PREFIX)


def to_label_value(text: str) -> str:
    """Turn arbitrary text (a GPU product name, a clique id) into a valid label value.

    Spaces become dashes and other disallowed characters are dropped (as GPU Feature Discovery
    does for ``nvidia.com/gpu.product``). A result over 63 characters is shortened
    deterministically: a prefix, a dash and a 10-character SHA-256 digest of the full text,
    so distinct long inputs stay distinct and the same input always maps to the same value.
    """
    cleaned = _INVALID_VALUE_CHARS_RE.sub("", text.strip().replace(" ", "-"))
    cleaned = cleaned.strip("-_.")
    if len(cleaned) <= NAME_MAX_LENGTH:
        return cleaned
    digest = hashlib.sha256(text.encode()).hexdigest()[:_HASH_LENGTH]
    head = cleaned[: NAME_MAX_LENGTH - _HASH_LENGTH - 1].rstrip("-_.")
    return f"{head}-{digest}"
