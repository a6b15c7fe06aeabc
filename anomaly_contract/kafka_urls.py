"""Kafka topic names and ``kafka://HOST:PORT[,HOST:PORT...]/TOPIC`` URLs, checked in one place.

The trainer's data source (``kafka://.../TOPIC?max_records=N``), the model topic of both
processes and the worker's topic settings all go through here. A malformed URL raises
`KafkaUrlProblem` saying which part is wrong; each caller words the one-line message for its
own context (a data source, a model topic) with `KafkaUrlProblem.worded` and raises its own
error class.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's legal topic names

ProblemKind = Literal["scheme", "options", "broker", "no_topic", "bad_topic"]
BROKER_PROBLEM = "invalid broker address {part!r} in {url!r}"  # the same wording everywhere


def is_topic_name(name: str) -> bool:
    """Whether ``name`` is a legal Kafka topic name (1-249 letters, digits, ``.``, ``_``, ``-``)."""
    return _TOPIC_RE.match(name) is not None


class KafkaUrlProblem(ValueError):
    """What is wrong with a URL: ``kind`` names the part, ``part`` holds the offending text."""

    def __init__(self, kind: ProblemKind, url: str, part: str = "") -> None:
        super().__init__(f"{kind}: {part!r} in {url!r}")
        self.kind = kind
        self.url = url
        self.part = part

    def worded(self, messages: Mapping[ProblemKind, str]) -> str:
        """The caller's message for this kind, with ``{url}`` and ``{part}`` filled in."""
        return messages[self.kind].format(url=self.url, part=self.part)


@dataclass(frozen=True)
class KafkaUrl:
    """A checked ``kafka://`` URL: brokers normalised to ``host:port``, the topic, the raw query."""

    servers: tuple[str, ...]
    topic: str
    query: str

    @property
    def bootstrap(self) -> str:
        """The brokers as one ``host:port,host:port`` string (kafka-python's bootstrap_servers)."""
        return ",".join(self.servers)


def split_kafka_url(url: str, *, options: bool = True) -> KafkaUrl:
    """Check ``url`` part by part and split it; `KafkaUrlProblem` names the first bad part.

    The parts are checked in this order: the scheme and a broker list, then (with
    ``options=False``) the absence of a query or fragment, each broker's ``HOST:PORT``, the topic.
    """
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise KafkaUrlProblem("scheme", url, url)
    if not options and (parts.query or parts.fragment):
        raise KafkaUrlProblem("options", url, parts.query or parts.fragment)
    servers = []
    for server in parts.netloc.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise KafkaUrlProblem("broker", url, server)
        servers.append(f"{host}:{int(port)}")
    topic = parts.path.lstrip("/")
    if not topic:
        raise KafkaUrlProblem("no_topic", url, topic)
    if not is_topic_name(topic):
        raise KafkaUrlProblem("bad_topic", url, topic)
    return KafkaUrl(tuple(servers), topic, parts.query)
