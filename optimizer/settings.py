"""Optimizer settings: ``STOWAGE_*`` environment variables and an optional YAML file.

Precedence: constructor arguments (the CLI's flags), then environment variables, then the
YAML file named by ``STOWAGE_CONFIG_FILE``, then defaults. Any invalid value stops the
optimizer at start with the setting's name.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from optimizer.planner.cycle import DEFAULT_ACTIONS, CycleConfig
from optimizer.planner.ordering import ORDERINGS
from optimizer.planner.policies import policy_or_raise
from optimizer.planner.snapshot import TopologyLevel
from shared.labels import label_key_errors, label_value_errors

DEFAULT_DATABASE_URL = "sqlite:///stowage.db"


class _YamlFileSource(PydanticBaseSettingsSource):
    """Settings from the YAML file named by ``STOWAGE_CONFIG_FILE`` (keys = field names)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("STOWAGE_CONFIG_FILE")
        if not path:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"STOWAGE_CONFIG_FILE {path}: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"STOWAGE_CONFIG_FILE {path}: must be a mapping of settings")
        return data


class OptimizerSettings(BaseSettings):
    """Everything the optimizer can be configured with."""

    model_config = SettingsConfigDict(env_prefix="STOWAGE_", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite:///path (WAL mode) or postgresql+psycopg://...",
    )
    host: str = Field(default="127.0.0.1", description="Listen address.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(default=8080, description="Listen port.")
    stale_after_s: Annotated[float, Field(gt=0)] = Field(
        default=60.0, description="A node with no report for this long is stale."
    )
    raw_retention_s: Annotated[float, Field(gt=0)] = Field(
        default=2 * 86400.0, description="Keep raw samples this long."
    )
    rollup_5m_retention_s: Annotated[float, Field(gt=0)] = Field(
        default=30 * 86400.0, description="Keep 5-minute rollups this long."
    )
    rollup_1h_retention_s: Annotated[float, Field(gt=0)] = Field(
        default=400 * 86400.0, description="Keep 1-hour rollups this long."
    )
    audit_retention_s: Annotated[float, Field(gt=0)] = Field(
        default=90 * 86400.0, description="Keep audit entries this long."
    )
    topology_retention_s: Annotated[float, Field(gt=0)] = Field(
        default=30 * 86400.0,
        description="Keep topology versions a node has since replaced this long (the "
        "current one is always kept).",
    )
    prune_interval_s: Annotated[float, Field(gt=0)] = Field(
        default=600.0, description="How often retention is applied while serving."
    )
    rollup_fold_interval_s: Annotated[float, Field(gt=0)] = Field(
        default=30.0,
        description="How often, while serving, samples of closed 5-minute buckets are "
        "folded into the rollups (until then readers add them from the pending table).",
    )
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 2**20)] = Field(
        default=2 * 2**20, description="Largest accepted request body (413 above)."
    )
    header_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        default=10.0,
        description="A connection that has not sent a request's line and headers within "
        "this long is closed (a client trickling headers cannot hold connections).",
    )
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=16384,
        description="Open connections served at once, idle keep-alive ones included (an "
        "agent holds one for about 5 s after each report); a request on one past it gets "
        "503.",
    )
    max_receiving: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=256,
        description="Requests whose bodies are being received at once; one more gets 503 "
        "with Retry-After (each may hold about 320 KiB in the HTTP server before the API "
        "reads it, so memory stays bounded however many clients send at once).",
    )
    shutdown_timeout_s: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=20,
        description="After SIGTERM, requests still in progress this long are cancelled "
        "and the server exits (keep it under the Pod's terminationGracePeriodSeconds).",
    )
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0,
        description="A request whose body has not arrived whole within this long of its "
        "headers has its connection closed (a client trickling a body cannot hold the "
        "body budgets).",
    )
    in_flight_body_bytes: Annotated[int, Field(ge=2**20, le=2**32)] = Field(
        default=128 * 2**20,
        description="Request-body bytes all requests in progress may hold together; a "
        "request past it gets 503 with Retry-After (memory stays bounded however many "
        "clients send at once).",
    )
    report_rate_per_node: Annotated[float, Field(ge=0)] = Field(
        default=2.0,
        description="Reports per second one agent may send, sustained (0: unlimited); more "
        "get 429 with Retry-After, so one node cannot slow the others.",
    )
    report_burst_per_node: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=60, description="Reports one agent may send at once (a buffer flush)."
    )
    ingest_queue_bytes: Annotated[int, Field(ge=2**20, le=2**32)] = Field(
        default=64 * 2**20,
        description="Memory the reports waiting for the writer may hold (estimated as 8 "
        "bytes per byte of their JSON) before 503 (memory stays bounded whatever clients "
        "send).",
    )
    ingest_answer_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=10.0,
        description="A report not stored within this long is answered 503 with Retry-After "
        "(a frozen database); the agent resends it, and it is stored once.",
    )
    retry_after_s: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=5, description="Retry-After sent with 503 when the database is unavailable."
    )
    auth: Literal["tokens", "tokenreview", "none"] = Field(
        default="tokens",
        description="tokens: STOWAGE_TOKENS_FILE; tokenreview: Kubernetes TokenReview for "
        "agents plus the tokens file for people; none: no authentication (development only).",
    )
    tokens_file: Path | None = Field(
        default=None, description="YAML list of {token, subject, role}."
    )
    agent_username: str = Field(
        default="system:serviceaccount:stowage:stowage-agent",
        description="The agents' ServiceAccount user name (auth=tokenreview).",
    )
    tokenreview_audience: str = Field(
        default="stowage", description="Audience agents' projected tokens must carry."
    )
    tls_cert_file: Path | None = Field(default=None, description="Serve HTTPS with this cert.")
    tls_key_file: Path | None = Field(default=None, description="The certificate's key.")
    max_clock_skew_s: Annotated[float, Field(ge=0, le=86400)] = Field(
        default=300.0,
        description="A report dated more than this far ahead of the optimizer's clock is "
        "refused (422); one older than the raw retention too.",
    )
    gpu_move_after_s: Annotated[float, Field(gt=0)] = Field(
        default=600.0,
        description="A GPU UUID belongs to one node; another node may claim it (a GPU moved "
        "to another server) once its owner has not reported for this long.",
    )
    idle_util_ratio: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.05, description="A GPU below this utilisation with no process is idle."
    )
    pools: dict[str, str] = Field(
        default_factory=dict,
        description="Pool name -> regular expression on node names; the first match names a "
        "node's pool (JSON object in the environment, a mapping in the YAML file).",
    )
    controller: Literal["off", "dry-run", "enforce"] = Field(
        default="off",
        description="The Kubernetes controller (node labels, gang admission): off; dry-run "
        "(plans, events, audit, no mutation); enforce.",
    )
    cost_window_s: Annotated[float, Field(gt=0, le=31 * 86400)] = Field(
        default=86400.0,
        description="The per-namespace energy, GPU-hours and cost metrics cover this much "
        "recent history (raw samples: keep STOWAGE_RAW_RETENTION_S at least as long).",
    )
    price_per_kwh: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="Energy price per kWh, for the per-namespace cost metric."
    )
    price_per_gpu_hour: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="Price of one GPU-hour, for the per-namespace cost metric."
    )
    label_grace_s: Annotated[float, Field(ge=0)] = Field(
        default=300.0,
        description="A node whose agent went stale keeps its labels; after this much longer "
        "its stowage.io/gpu.health says unknown.",
    )
    gfd_labels: Literal["defer", "duplicate"] = Field(
        default="defer",
        description="defer: where GPU Feature Discovery labels a node (nvidia.com/gpu.product, "
        ".count, .memory), Stowage does not write its own copies; duplicate: write them anyway.",
    )
    controller_namespace: str = Field(
        default="stowage", description="Namespace of the leader-election Lease (the pod's own)."
    )
    controller_identity: str = Field(
        default_factory=socket.gethostname,
        description="This replica's name in the Lease and the audit log (the chart sets the "
        "pod name).",
        json_schema_extra={"shownDefault": "the host name"},
    )
    controller_interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=10.0, description="Seconds between controller cycles."
    )
    lease_duration_s: Annotated[int, Field(ge=3, le=600)] = Field(
        default=15,
        description="Leader lease: another replica takes over this long after the "
        "leader's last renewal.",
    )
    planner_policy: str = Field(
        default="stowage",
        description="The score plugin that places each pod (stowage, fgd, bestfit, "
        "kube-default, …; `stowage simulate fill --help` lists them).",
    )
    planner_actions: list[str] = Field(
        default=list(DEFAULT_ACTIONS),
        description="The cycle's actions, in order (allocate, backfill, reclaim, preempt).",
    )
    fair_share_half_life_s: float = Field(
        default=0.0,
        ge=0.0,
        description="With a positive value, fair share across queues also counts each "
        "queue's past borrowing, decayed with this half-life in seconds (0: current "
        "borrowing only).",
    )
    planner_ordering: str = Field(
        default="priority",
        description="How jobs are ordered in a queue whose Queue object names no ordering "
        "(fifo, priority, qssf, stowage, tiresias-las).",
    )
    topology_levels: list[str] = Field(
        default=[
            "zone=topology.kubernetes.io/zone",
            "block=topology.stowage.io/block",
            "rack=topology.stowage.io/rack",
            "nvlink-clique=stowage.io/gpu.clique",
            "hostname=kubernetes.io/hostname",
        ],
        description="Topology levels, outermost first, as NAME=NODE-LABEL-KEY; a gang names "
        "a level in stowage.io/topology-required or -preferred. GPU Feature Discovery's "
        "nvidia.com/gpu.clique works as a level too.",
    )
    bind_deadline_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        default=300.0,
        description="A released, pinned pod kube-scheduler has not bound after this long "
        "rolls its gang back.",
    )
    gang_retention_s: Annotated[float, Field(gt=0)] = Field(
        default=86400.0,
        description="Keep closed admission intents and the status of gangs gone from the "
        "cluster this long.",
    )
    demand_sample_s: float = Field(
        default=60.0,
        ge=0.0,
        description="The leader records each scope's GPU capacity and demand (allocated + "
        "pending) at most this often, for forecasts (0: never).",
    )
    demand_retention_s: Annotated[float, Field(gt=0)] = Field(
        default=90 * 86400.0,
        description="Keep demand samples and finished job runs this long.",
    )
    forecast_interval_s: float = Field(
        default=3600.0,
        ge=0.0,
        description="The leader retrains every scope's forecasts this often, in a thread "
        "beside the cycle (0: never).",
    )
    forecast_history_s: Annotated[float, Field(gt=0)] = Field(
        default=35 * 86400.0,
        description="How much history each retraining reads (the newest).",
    )
    rightsizing_window_s: Annotated[float, Field(gt=0)] = Field(
        default=86400.0,
        description="Right-sizing and idle detection look at this much recent history "
        "(raw samples: keep STOWAGE_RAW_RETENTION_S at least as long).",
    )
    idle_after_s: Annotated[float, Field(gt=0)] = Field(
        default=3600.0,
        description="A pod is judged (idle, fewer GPUs, a smaller slice) once observed this long.",
    )
    idle_reclaim_after_s: float = Field(
        default=0.0,
        ge=0.0,
        description="With a positive value, the leader evicts pods in opted-in namespaces "
        "whose every GPU stayed under 5% activity this long (audited; dry run first with "
        "STOWAGE_CONTROLLER=dry-run; 0: never).",
    )
    request_shapes: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        default=[8, 4, 2],
        description="GPUs per pod of the request shapes used to count fragmented GPUs.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlFileSource(settings_cls)

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql:// SQLAlchemy URL")
        return value

    @field_validator("pools")
    @classmethod
    def _pools_valid(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            if errors := label_value_errors(name) or ([] if name else ["must not be empty"]):
                raise ValueError(f"pool name {name!r}: {'; '.join(errors)}")
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"pool {name!r}: bad regular expression: {error}") from None
        return value

    @field_validator("planner_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        policy_or_raise(value)
        return value

    @field_validator("planner_ordering")
    @classmethod
    def _known_ordering(cls, value: str) -> str:
        ORDERINGS.get_or_raise(value)
        return value

    @field_validator("planner_actions")
    @classmethod
    def _known_actions(cls, value: list[str]) -> list[str]:
        CycleConfig(actions=tuple(value)).validate()
        return value

    @field_validator("topology_levels")
    @classmethod
    def _levels_valid(cls, value: list[str]) -> list[str]:
        names: set[str] = set()
        for entry in value:
            name, eq, key = entry.partition("=")
            if not eq or not name or not key:
                raise ValueError(f"{entry!r}: write NAME=NODE-LABEL-KEY")
            if errors := label_key_errors(key):
                raise ValueError(f"{entry!r}: label key {key!r}: {'; '.join(errors)}")
            if name in names:
                raise ValueError(f"topology level {name!r} is named twice")
            names.add(name)
        return value

    def levels(self) -> list[TopologyLevel]:
        """The topology levels, outermost first."""
        return [TopologyLevel(*entry.split("=", 1)) for entry in self.topology_levels]

    def pool_of(self, node_name: str) -> str | None:
        """The first pool whose expression matches ``node_name`` entirely, or None."""
        for name, pattern in self.pools.items():
            if re.fullmatch(pattern, node_name):
                return name
        return None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.auth == "tokens" and self.tokens_file is None:
            raise ValueError(
                "auth=tokens needs tokens_file (STOWAGE_TOKENS_FILE); "
                "STOWAGE_AUTH=none serves without authentication, for development only"
            )
        for path in (self.tokens_file, self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{path}: no such file")
        return self
