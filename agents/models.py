"""Agents, the sessions users hold with them, and the messages of those sessions."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

__all__ = [
    "Agent",
    "AgentMcpServer",
    "Message",
    "OnIdle",
    "SandboxHost",
    "Session",
    "TurnContent",
    "WarmPool",
]


class SandboxHost(models.Model):
    """A machine that runs sandboxes: one Celery worker, its own queue, and its capacity."""

    name = models.CharField(max_length=100, unique=True)
    backend = models.CharField(max_length=16, default="process")
    capacity_vcpus = models.PositiveIntegerField()
    capacity_memory_mib = models.PositiveIntegerField()
    accel = models.CharField(max_length=8, blank=True, help_text="kvm or tcg, for microVMs.")
    relay_url = models.CharField(
        max_length=200,
        blank=True,
        help_text="Its agent relay's address; empty: its agents are reached directly.",
    )
    gpus = models.JSONField(
        default=list,
        blank=True,
        help_text="Its GPUs and their MIG slices, as its worker found or was told "
        "(SANDBOX_HOST_GPUS): index, model, memory_mib, uuid, pci_address, mig.",
    )
    is_online = models.BooleanField(default=True)
    is_draining = models.BooleanField(default=False, help_text="Takes no new agents.")
    last_seen_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def queue_of(name: str) -> str:
        """The Celery queue of the host named ``name``: its worker alone consumes it."""
        return f"sandboxes.{name}"

    @property
    def queue(self) -> str:
        return self.queue_of(self.name)


class OnIdle(models.TextChoices):
    """What the idle reaper does with an agent idle past ``AGENT_IDLE_TIMEOUT_SECONDS``."""

    STOP = "stop"
    PAUSE = "pause"


class WarmPool(models.Model):
    """Agents of one template (model, system prompt, size) kept booted and unowned, so that a
    matching spawn claims one at once instead of booting."""

    name = models.CharField(max_length=100, unique=True)
    model = models.CharField(max_length=100)
    system_prompt = models.TextField(blank=True)
    vcpus = models.PositiveSmallIntegerField(default=1)
    memory_mib = models.PositiveIntegerField(default=512)
    max_concurrent_sessions = models.PositiveIntegerField(default=100)
    size = models.PositiveIntegerField(default=2, help_text="Agents kept ready.")
    on_idle = models.CharField(
        max_length=8,
        choices=OnIdle.choices,
        default=OnIdle.STOP,
        help_text="What its agents, once claimed, do when idle: stop, or pause.",
    )
    is_enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Agent(models.Model):
    """A Claude agent running in its own sandbox, owned by one user.

    A deleted agent keeps its row (``deleted_at`` set) so that its usage stays attributed.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        STARTING = "starting"
        RUNNING = "running"
        STOPPING = "stopping"
        STOPPED = "stopped"
        FAILED = "failed"
        PAUSING = "pausing"
        PAUSED = "paused"
        RESUMING = "resuming"

    class Architecture(models.TextChoices):
        """How its runtime runs a chat turn (``agents.runtime.architectures``)."""

        BUILTIN = "builtin", "Built-in tool-use loop"
        CLAUDE_AGENT_SDK = "claude_agent_sdk", "Claude Agent SDK"

    ACTIVE_STATUSES = (Status.PENDING, Status.STARTING, Status.RUNNING)
    # A paused agent uses no CPU but keeps its memory (and GPUs, and its place in the quota).
    PAUSED_STATUSES = (Status.PAUSING, Status.PAUSED, Status.RESUMING)
    HOLDING_STATUSES = (*ACTIVE_STATUSES, *PAUSED_STATUSES)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agents"
    )
    name = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=100)
    system_prompt = models.TextField(blank=True)
    vcpus = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(64)]
    )
    memory_mib = models.PositiveIntegerField(
        default=512, validators=[MinValueValidator(64), MaxValueValidator(256 * 1024)]
    )
    max_concurrent_sessions = models.PositiveIntegerField(
        default=100, validators=[MinValueValidator(1), MaxValueValidator(10_000)]
    )
    gpu_count = models.PositiveSmallIntegerField(
        default=0, validators=[MaxValueValidator(16)], help_text="GPUs (or MIG slices) asked for."
    )
    gpu_model = models.CharField(
        max_length=100, blank=True, help_text="Of this model only (a part of its name: A100)."
    )
    gpu_profile = models.CharField(
        max_length=32,
        blank=True,
        help_text="MIG slices of this profile (1g.10gb); empty: whole GPUs.",
    )
    gpus = models.JSONField(
        default=list, blank=True, help_text="The GPUs or MIG slices of its host it was given."
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    backend = models.CharField(max_length=16, default="process")
    host = models.ForeignKey(
        SandboxHost, on_delete=models.SET_NULL, null=True, blank=True, related_name="agents"
    )
    accel = models.CharField(max_length=8, blank=True, help_text="kvm or tcg, for microVMs.")
    warm_pool = models.ForeignKey(
        WarmPool,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="agents",
        help_text="Set while the agent waits, unclaimed, in this pool.",
    )
    last_active_at = models.DateTimeField(null=True, blank=True, help_text="Its last chat turn.")
    on_idle = models.CharField(
        max_length=8,
        choices=OnIdle.choices,
        default=OnIdle.STOP,
        help_text="What it does when idle past AGENT_IDLE_TIMEOUT_SECONDS: stop, or pause.",
    )
    paused_at = models.DateTimeField(null=True, blank=True)
    pause_method = models.CharField(
        max_length=16,
        blank=True,
        help_text="How its sandbox is paused: freezer, sigstop, vm-stop or snapshot (on disk).",
    )
    draining_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set while the autoscaler retires the agent: it takes no new session and is "
        "stopped once its open sessions have closed.",
    )
    sandbox_id = models.CharField(max_length=64, blank=True)
    endpoint = models.CharField(max_length=255, blank=True, help_text="Where the runtime listens.")
    anthropic_key_encrypted = models.TextField(
        blank=True, help_text="The owner's own Anthropic key, encrypted; empty: the platform key."
    )
    builtin_tools = models.JSONField(
        null=True,
        blank=True,
        help_text="The built-in tools it has (run_command, read_file, write_file); "
        "null: those the operator's AGENT_TOOLS enables.",
    )
    console_mcp = models.BooleanField(
        default=False, help_text="It has the console's own MCP tools, acting as its owner."
    )
    architecture = models.CharField(
        max_length=20,
        choices=Architecture.choices,
        default=Architecture.BUILTIN,
        help_text="How its runtime runs a chat turn: its own loop, or the Claude Agent SDK.",
    )
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "status"], name="agent_owner_status")]
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    status__in=[
                        *("pending", "starting", "running", "stopping", "stopped", "failed"),
                        *("pausing", "paused", "resuming"),
                    ]
                ),
                name="agent_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name or str(self.id)

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def is_holding(self) -> bool:
        """Active or paused: it holds its sandbox and its memory."""
        return self.status in self.HOLDING_STATUSES


class AgentMcpServer(models.Model):
    """An MCP server an agent may use: its tools are offered to Claude as ``<name>__<tool>``,
    and its traffic goes through the gateway, which adds the secret (never sent into the
    sandbox)."""

    # The name under which an agent spawned with ``console_mcp`` reaches the console's own.
    CONSOLE = "console"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="mcp_servers")
    name = models.CharField(max_length=30, help_text="The prefix of its tools' names.")
    url = models.URLField(max_length=2000)
    secret_encrypted = models.TextField(
        blank=True,
        help_text="Its bearer token, encrypted; empty: it is called without a credential.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "name"], name="agent_mcp_server_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.url})"


class Session(models.Model):
    """A conversation between a user and an agent; the runtime keeps its history under this id."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="sessions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    """One turn of a session, with the tokens and cost the assistant's turns used."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField()
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal(0))
    tool_calls = models.JSONField(
        default=list,
        blank=True,
        help_text="The tools an assistant's turn called, in order: name, input, is_error and "
        "output (cut short), as the runtime reported them.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class TurnContent(models.Model):
    """One turn of a session as Claude saw it: the prompt, then every message the turn added
    (replies with their tool calls, tool results), in the Messages API's shape; what a runtime
    started afresh gets back (``agents.services.conversations``)."""

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="turn_contents")
    position = models.PositiveIntegerField(help_text="The turn's place in the session, from 0.")
    messages = models.JSONField(help_text="Its messages, each block bounded.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "position"]
        constraints = [
            models.UniqueConstraint(fields=["session", "position"], name="turn_content_position"),
        ]

    def __str__(self) -> str:
        return f"turn {self.position} of {self.session_id}"


class AgentDemand(models.Model):
    """A request waiting for one of its owner's agents to run (a one-shot task naming no agent
    when none runs): the autoscaler counts it in the load of the owner's pool, which wakes a
    pool at zero. The caller deletes it once served or refused; ``expires_at`` leaves out one
    whose caller vanished."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    answered_at = models.DateTimeField(
        null=True, blank=True, help_text="When the autoscaler took the demand up."
    )
    pool = models.CharField(
        max_length=100,
        blank=True,
        help_text="The scaling rule whose pool it woke; empty once answered: none serves it.",
    )

    class Meta:
        indexes = [models.Index(fields=["owner", "expires_at"], name="agent_demand_owner")]

    def __str__(self) -> str:
        return f"demand of {self.owner_id} until {self.expires_at:%H:%M:%S}"


class ServingProcess(models.Model):
    """A web, gateway or relay process, as it last said it was alive: what Prometheus is
    pointed at (``scaling.views.metrics_machines``). Its ``metrics_url`` is where its machine's
    ``/metrics`` is reached from the monitoring network: every process of one machine writes
    to the same multiprocess folder, so one scrape of that URL reads them all."""

    class Kind(models.TextChoices):
        WEB = "web"
        GATEWAY = "gateway"
        RELAY = "relay"

    machine = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    pid = models.PositiveIntegerField()
    metrics_url = models.CharField(max_length=300)
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["machine", "kind", "pid"]
        constraints = [
            models.UniqueConstraint(fields=["machine", "kind", "pid"], name="serving_process_one")
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.pid} on {self.machine}"
