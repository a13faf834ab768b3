"""Agent settings: ``STOWAGE_AGENT_*`` environment variables, overridden by CLI flags."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, HttpUrl, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.exporter import DEFAULT_PORT
from agent.pods import DEFAULT_SOCKET
from shared.report import is_valid_node_name


class AgentSettings(BaseSettings):
    """Everything the agent can be configured with; invalid values fail at start by name."""

    model_config = SettingsConfigDict(env_prefix="STOWAGE_AGENT_", extra="forbid")

    node_name: str = Field(
        default_factory=lambda: socket.gethostname().lower(),
        validation_alias=AliasChoices("STOWAGE_AGENT_NODE_NAME", "NODE_NAME", "node_name"),
        description="Kubernetes node name to report as (the DaemonSet sets NODE_NAME).",
        json_schema_extra={"shownDefault": "the host name"},
    )
    optimizer_url: HttpUrl | None = Field(
        default=None, description="Optimizer base URL; unset = do not report."
    )
    token_file: Path | None = Field(
        default=None, description="Bearer token file (a projected ServiceAccount token)."
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle (PEM) the optimizer's HTTPS certificate must chain to "
        "(default: the system's trust store).",
    )
    interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=10.0, description="Seconds between collections."
    )
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=DEFAULT_PORT, description="Prometheus exporter port; 0 disables it."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Exporter listen address.")
    fake_profile: str | None = Field(
        default=None, description="Run on a fake NVML from this profile (name or YAML path)."
    )
    host_root: Path = Field(default=Path("/"), description="Where the host's /sys and /proc are.")
    podresources_socket: Path = Field(
        default=DEFAULT_SOCKET, description="kubelet PodResources socket."
    )
    podresources_refresh_s: Annotated[float, Field(gt=0)] = Field(
        default=30.0, description="Seconds between PodResources reads."
    )
    dcgm_exporter_url: HttpUrl | None = Field(
        default=None,
        description="A dcgm-exporter's metrics URL (e.g. http://$(HOST_IP):9400/metrics) to "
        "read utilisation, memory, power, energy, temperature, clocks and DCGM profiling "
        "ratios from instead of polling NVML for them; GPUs or values it lacks are read "
        "through NVML.",
    )
    buffer_reports: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=360, description="Reports kept while the optimizer is unreachable."
    )

    @field_validator("ca_file")
    @classmethod
    def _ca_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value}: no such file")
        return value

    @field_validator("node_name")
    @classmethod
    def _node_name_is_valid(cls, value: str) -> str:
        if not is_valid_node_name(value):
            raise ValueError(f"{value!r} is not a valid Kubernetes node name")
        return value
