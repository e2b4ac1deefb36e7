"""The logger's queue side: publishing to the NATS JetStream stream or the Kafka topic that
``mlaudit serve --ingest`` consumes, with the same URLs as the server's (see docs/QUEUES.md).

Each event is one message (its JSON, ``Content-Type: application/json``; the Rust SDK sends
a Protobuf batch of one) carrying the event's
id — ``Nats-Msg-Id`` for JetStream, whose duplicate window then drops a retried publish, and
the message key for Kafka — and counts as delivered once the queue acknowledged it. Any
failure is a RETRY: the logger keeps the events (in the spool) and sends them again, and the
log stores a resent event once.

* ``nats://HOST:PORT/STREAM[?subject=S]`` needs ``nats-py`` (``pip install 'mlaudit[nats]'``);
  the events go to ``subject`` (default ``mlaudit.events``).
* ``kafka://HOST:PORT[,HOST:PORT...]/TOPIC`` needs ``confluent-kafka``
  (``pip install 'mlaudit[kafka]'``); the producer is idempotent with ``acks=all``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs

from ._http import DELIVERED, RETRY, SPLIT, Outcome

CONTENT_TYPE = "application/json"


def is_queue_url(url: str) -> bool:
    return url.startswith(("nats://", "kafka://"))


def _parts(url: str) -> Tuple[str, str, str, Dict[str, List[str]]]:
    scheme, _, rest = url.partition("://")
    authority, _, path = rest.partition("/")
    name, _, query = path.partition("?")
    if not authority or not name:
        raise ValueError(f"{scheme}:// URL needs a host and a stream or topic: {url!r}")
    return scheme, authority, name, parse_qs(query)


def _event_id(body: bytes) -> str:
    try:
        value = json.loads(body).get("id")
        return value if isinstance(value, str) else ""
    except (ValueError, AttributeError):
        return ""


async def _quiet(e: Exception) -> None:
    """nats-py's error callback: the logger reports failed sends itself."""


def queue_transport(url: str, timeout: float, kafka_config: Optional[Dict[str, Any]] = None):
    scheme, authority, name, query = _parts(url)
    if scheme == "nats":
        subject = query.get("subject", ["mlaudit.events"])[0]
        return NatsTransport(f"nats://{authority}", subject, timeout)
    return KafkaTransport(authority, name, timeout, kafka_config or {})


class _QueueTransport:
    """What the logger asks of any transport beside ``post_events``."""

    def redact(self, text: str) -> str:
        return text

    def get_json(self, path: str) -> Tuple[Optional[int], Any, str]:
        # A queue gives no receipts, hence no checkpoints to check: never asked in practice.
        return None, None, "a queue transport has no proofs"

    def close(self) -> None:
        """Releases the connection (the logger calls it once its sender has stopped)."""


class NatsTransport(_QueueTransport):
    """JetStream publishes from a private asyncio loop on a daemon thread (nats-py is
    asyncio-only; the logger's sender thread waits on each batch's acknowledgements)."""

    def __init__(self, server: str, subject: str, timeout: float) -> None:
        try:
            import nats  # noqa: F401
        except ImportError as e:
            raise ValueError("nats:// needs nats-py: pip install 'mlaudit[nats]'") from e
        self.server, self.subject, self.timeout = server, subject, timeout
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._nc: Any = None
        self._js: Any = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The private loop, started at the first send (a logger whose delivery is another
        process never sends from this one)."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name="mlaudit-nats",
                                            daemon=True)
            self._thread.start()
            self._loop = loop
        return self._loop

    async def _disconnect(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    def close(self) -> None:
        """Closes the connection and stops the private loop and its thread (every publish
        has been acknowledged or spooled by then)."""
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._disconnect(), loop).result(self.timeout + 1.0)
        except Exception:  # a server already gone: the connection is dropped with the loop
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        if not thread.is_alive():
            loop.close()
        self._nc = self._js = None

    async def _connect(self) -> Any:
        import nats
        if self._nc is None or self._nc.is_closed:
            # A bounded number of reconnections: with none left the connection closes and
            # the next send connects afresh (an unbounded number would keep the first
            # connect from ever returning while the server is down).
            self._nc = await nats.connect(self.server, connect_timeout=min(self.timeout, 5.0),
                                          max_reconnect_attempts=3, reconnect_time_wait=0.5,
                                          allow_reconnect=True, name="mlaudit-python",
                                          error_cb=_quiet)
            self._js = self._nc.jetstream(timeout=self.timeout)
        return self._js

    async def _publish(self, bodies: List[bytes]) -> int:
        js = await self._connect()
        acks = await asyncio.gather(*(
            js.publish(self.subject, body, headers={"Nats-Msg-Id": _event_id(body),
                                                    "Content-Type": CONTENT_TYPE})
            for body in bodies))
        return sum(1 for a in acks if getattr(a, "duplicate", False))

    def post_events(self, bodies: List[bytes]) -> Outcome:
        future = asyncio.run_coroutine_threadsafe(self._publish(bodies), self._running_loop())
        try:
            duplicates = future.result(self.timeout + 1.0)
        except Exception as e:  # no server, no stream (no responders), a timeout
            future.cancel()
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if "MaxPayload" in why:  # over the server's max_payload: like an HTTP 413
                return Outcome(SPLIT, reason=f"NATS: {why}")
            if "NoRespondersError" in why:
                why += f" (no JetStream stream takes subject {self.subject}: start the " \
                       "server's consumer, mlaudit serve --ingest, once to create it)"
            return Outcome(RETRY, reason=f"NATS: {why}")
        receipts = [{"duplicate": i < duplicates} for i in range(len(bodies))]
        return Outcome(DELIVERED, doc={"events": receipts})


class KafkaTransport(_QueueTransport):
    """An idempotent confluent-kafka producer with ``acks=all``."""

    def __init__(self, brokers: str, topic: str, timeout: float,
                 extra: Dict[str, Any]) -> None:
        try:
            from confluent_kafka import Producer
        except ImportError as e:
            raise ValueError("kafka:// needs confluent-kafka: pip install 'mlaudit[kafka]'") from e
        config = {"bootstrap.servers": brokers, "client.id": "mlaudit-python", "acks": "all",
                  "enable.idempotence": True,
                  "message.timeout.ms": int(max(timeout, 1.0) * 1000)}
        config.update(extra)
        self.topic, self.timeout = topic, timeout
        self._config = config
        self._new_producer = Producer
        self._producer: Any = None

    def post_events(self, bodies: List[bytes]) -> Outcome:
        failures: List[str] = []
        acked = [0]

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                acked[0] += 1

        try:
            if self._producer is None:  # at the first send, as for NATS
                self._producer = self._new_producer(self._config)
            for body in bodies:
                self._producer.produce(self.topic, value=body, key=_event_id(body),
                                       headers=[("content-type", CONTENT_TYPE.encode())],
                                       on_delivery=delivered)
            self._producer.flush(self.timeout)
        except Exception as e:  # BufferError (queue full), KafkaException
            if "MSG_SIZE_TOO_LARGE" in str(e):  # over the message size limit: like a 413
                return Outcome(SPLIT, reason=f"Kafka: {e}")
            return Outcome(RETRY, reason=f"Kafka: {type(e).__name__}: {e}")
        if failures or acked[0] != len(bodies):
            why = failures[0] if failures else f"{acked[0]} of {len(bodies)} acknowledged"
            if "MSG_SIZE_TOO_LARGE" in why:
                return Outcome(SPLIT, reason=f"Kafka: {why}")
            return Outcome(RETRY, reason=f"Kafka: {why}")
        return Outcome(DELIVERED, doc={"events": [{"duplicate": False}] * len(bodies)})

    def close(self) -> None:
        """Drops the producer: every send was flushed (acknowledged or spooled) already."""
        self._producer = None
