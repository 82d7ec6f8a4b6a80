"""Every NATS subject, stream, bucket and queue-group name Hive uses, built in one place.

Daemons and the CLI never format a subject themselves: a renamed subject, or a cluster
that runs under another prefix, is a change to this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

DEFAULT_PREFIX = "hive"
# Labels on every job container, by which an agent (and devstack) finds its containers.
CONTAINER_LABEL_NODE, CONTAINER_LABEL_JOB, CONTAINER_LABEL_EXEC = (
    "hive.node",
    "hive.job",
    "hive.exec",
)
# The key of the cluster bucket that holds the requesters' shared identity seed.
REQUESTER_SEED_KEY = "requester-seed"
# The key of the quotas bucket that holds the default quota (no user name starts with _).
QUOTA_DEFAULT_KEY = "_default"


@dataclass(frozen=True)
class Subjects:
    """Names for one Hive cluster, all derived from its subject prefix."""

    prefix: str = DEFAULT_PREFIX

    # -- node -> requester ---------------------------------------------------------
    @property
    def node_register(self) -> str:
        return f"{self.prefix}.node.register"

    def node_info(self, node_id: str) -> str:
        return f"{self.prefix}.node.{node_id}.info"

    def node_resources(self, node_id: str) -> str:
        return f"{self.prefix}.node.{node_id}.resources"

    def node_heartbeat(self, node_id: str) -> str:
        return f"{self.prefix}.node.{node_id}.heartbeat"

    def node_leave(self, node_id: str) -> str:
        """Published once by an agent that is shutting down, so it goes UNKNOWN at once."""
        return f"{self.prefix}.node.{node_id}.leave"

    def node_exec(self, node_id: str) -> str:
        return f"{self.prefix}.node.{node_id}.exec"

    def node_wildcard(self, what: str) -> str:
        """`hive.node.*.<what>`: one subscription serves every node."""
        return f"{self.prefix}.node.*.{what}"

    def node_id_from(self, subject: str) -> str:
        """The `<id>` token of a `hive.node.<id>.<what>` subject ('' when absent)."""
        parts = subject.split(".")
        return parts[-2] if len(parts) == self._node_subject_tokens else ""

    @cached_property
    def _node_subject_tokens(self) -> int:
        return self.prefix.count(".") + 4

    # -- requester -> node ---------------------------------------------------------
    def compute(self, node_id: str, verb: str) -> str:
        """`offer`, `cancel` or `control` requests to one node."""
        return f"{self.prefix}.compute.{node_id}.{verb}"

    # -- logs, events, api ---------------------------------------------------------
    def logs(self, job_id: str, exec_id: str) -> str:
        return f"{self.prefix}.logs.{job_id}.{exec_id}"

    def usage(self, node_id: str = "*") -> str:
        """`hive.usage.<node>`: one record per ended execution, into HIVE_USAGE. Only
        requesters publish here (a node's role may not): a node cannot write its own."""
        return f"{self.prefix}.usage.{node_id}"

    def node_events(self, node_id: str = "*") -> str:
        return f"{self.prefix}.events.node.{node_id}"

    def job_events(self, job_id: str = "*") -> str:
        return f"{self.prefix}.events.job.{job_id}"

    def token_events(self, token_id: str = "*") -> str:
        return f"{self.prefix}.events.token.{token_id}"

    def user_events(self, name: str = "*") -> str:
        return f"{self.prefix}.events.user.{name}"

    @property
    def all_events(self) -> str:
        """Every event, of nodes, jobs, tokens and users alike."""
        return f"{self.prefix}.events.>"

    def api(self, noun: str, verb: str) -> str:
        return f"{self.prefix}.api.{noun}.{verb}"

    @property
    def api_wildcard(self) -> str:
        return f"{self.prefix}.api.>"

    def uapi(self, noun: str, verb: str) -> str:
        """Where users' signed requests go (the `user` NATS role may publish only here)."""
        return f"{self.prefix}.uapi.{noun}.{verb}"

    @property
    def uapi_wildcard(self) -> str:
        return f"{self.prefix}.uapi.>"

    def is_uapi(self, subject: str) -> bool:
        return subject.startswith(f"{self.prefix}.uapi.")

    # -- JetStream names -----------------------------------------------------------
    @property
    def nodes_bucket(self) -> str:
        return f"{self._ident}_nodes"

    @property
    def jobs_bucket(self) -> str:
        return f"{self._ident}_jobs"

    @property
    def execs_bucket(self) -> str:
        """One key per execution, `<job id>.<exec id>`: a job's record does not grow
        with its count, and a change to one execution rewrites no other."""
        return f"{self._ident}_execs"

    @property
    def tokens_bucket(self) -> str:
        """Enrollment tokens, by id: the hash of each secret, never the secret."""
        return f"{self._ident}_tokens"

    @property
    def users_bucket(self) -> str:
        """Users by name: role and public key, never a secret."""
        return f"{self._ident}_users"

    @property
    def leases_bucket(self) -> str:
        """Who of a cluster's requesters leads (schedules, consumes updates, decides)."""
        return f"{self._ident}_leases"

    @property
    def quotas_bucket(self) -> str:
        """Quotas by user name, and the default for every user under `QUOTA_DEFAULT_KEY`."""
        return f"{self._ident}_quotas"

    @property
    def results_store(self) -> str:
        return f"{self._ident}_results"

    @property
    def cluster_bucket(self) -> str:
        """What every requester of the cluster shares and nobody else may read: the
        requester seed. Its stream is `KV_<bucket>` (see `kv_stream`)."""
        return f"{self._ident}_cluster"

    @staticmethod
    def kv_stream(bucket: str) -> str:
        """The stream JetStream keeps a KV bucket in."""
        return f"KV_{bucket}"

    @staticmethod
    def object_stream(bucket: str) -> str:
        """The stream JetStream keeps an object store in."""
        return f"OBJ_{bucket}"

    @property
    def requester_inbox(self) -> str:
        """The requesters' reply-subject prefix. Operators and nodes may listen on
        `_INBOX.>`; what JetStream answers a requester (the cluster seed among it) goes
        here instead, where they may not."""
        return f"_INBOX_{self._ident}_requester"

    @property
    def exec_stream(self) -> str:
        return f"{self._ident.upper()}_EXEC"

    @property
    def logs_stream(self) -> str:
        return f"{self._ident.upper()}_LOGS"

    @property
    def usage_stream(self) -> str:
        return f"{self._ident.upper()}_USAGE"

    @property
    def events_stream(self) -> str:
        return f"{self._ident.upper()}_EVENTS"

    @property
    def job_created(self) -> str:
        """A requester that is not the leader says here that it created a job, so the
        leader places it at once rather than when its watch of the bucket gets there."""
        return f"{self.prefix}.requester.job-created"

    @property
    def leader_queue(self) -> str:
        """The leader answers here with its queue of waiting work (`job list --queued`):
        a requester that does not lead forwards the request, as only the leader's
        scheduler knows the order it places in."""
        return f"{self.prefix}.requester.queue"

    @property
    def requester_queue(self) -> str:
        """Queue group shared by every requester, so each request is served once."""
        return f"{self._ident}-requesters"

    @cached_property
    def _ident(self) -> str:
        # Bucket and stream names may not contain dots.
        return self.prefix.replace(".", "_")
