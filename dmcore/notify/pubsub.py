"""Pub/Sub for notifications: publish to the topic, and set up topic + push subscription.

On Google Cloud, distributors (or the jobs they start) publish notifications
to the ``dm-distributor-notify`` topic, and an Eventarc trigger hands them to
``dm_notify``. The publisher here is what dm-side code (tests, ``dm serve
--emulators``, in-process distributors) uses; the setup helpers build the
local equivalent of the trigger: a push subscription to ``dm_notify``.

``google-cloud-pubsub`` honours ``PUBSUB_EMULATOR_HOST``, so the same code
talks to the emulator. It is imported only here (DESIGN §2).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from google.api_core import exceptions as gexc

# google-cloud-pubsub ships no type information (no py.typed): typed as Any here.
pubsub_v1: Any = importlib.import_module("google.cloud.pubsub_v1")

PUBLISH_TIMEOUT_S = 60.0


class PubSubPublisher:
    """Publishes messages to one topic (``projects/P/topics/T``)."""

    def __init__(self, topic: str, client: Any | None = None) -> None:
        if not topic.startswith("projects/") or "/topics/" not in topic:
            raise ValueError(f"topic must be projects/P/topics/T, got {topic!r}")
        self.topic = topic
        self.client: Any = client if client is not None else pubsub_v1.PublisherClient()

    def publish(self, data: bytes, attrs: Mapping[str, str]) -> str:
        """Publish one message and wait until Pub/Sub has it; returns its message id.

        Raises whatever the client raises (the caller decides whether to retry).
        """
        if not data and not attrs:
            raise ValueError("a Pub/Sub message needs data or attributes")
        future = self.client.publish(self.topic, data, **dict(attrs))
        return str(future.result(timeout=PUBLISH_TIMEOUT_S))

    def __call__(self, topic: str, data: bytes, attrs: dict[str, str]) -> None:
        """The ``publish(topic, data, attrs)`` hook shape test distributors use."""
        if topic != self.topic:
            raise ValueError(f"this publisher publishes to {self.topic}, not {topic}")
        self.publish(data, attrs)

    def close(self) -> None:
        stop = getattr(self.client, "stop", None)
        if callable(stop):
            stop()


def ensure_topic(topic: str, client: Any | None = None) -> bool:
    """Create ``topic`` unless it exists; returns whether it was created."""
    publisher = client if client is not None else pubsub_v1.PublisherClient()
    try:
        publisher.create_topic(request={"name": topic})
    except gexc.AlreadyExists:
        return False
    return True


def ensure_push_subscription(
    subscription: str,
    topic: str,
    endpoint: str,
    *,
    ack_deadline_s: int = 60,
    client: Any | None = None,
) -> bool:
    """Create a push subscription of ``topic`` to ``endpoint``; returns whether it was created.

    An existing subscription of that name is pointed at ``endpoint`` (a new
    ``dm serve`` on another port reusing a running emulator). Point
    ``endpoint`` at ``.../projects/P/topics/T`` of the ``dm_notify``
    function: functions-framework turns the raw push body into a CloudEvent
    and reads the topic (the event's source) from that path.
    """
    subscriber = client if client is not None else pubsub_v1.SubscriberClient()
    push_config = {"push_endpoint": endpoint}
    try:
        subscriber.create_subscription(
            request={
                "name": subscription,
                "topic": topic,
                "push_config": push_config,
                "ack_deadline_seconds": ack_deadline_s,
            }
        )
    except gexc.AlreadyExists:
        subscriber.modify_push_config(
            request={"subscription": subscription, "push_config": push_config}
        )
        return False
    finally:
        if client is None:
            subscriber.close()
    return True


def delete_subscription(subscription: str, client: Any | None = None) -> bool:
    """Delete a subscription (a push one stops pushing); False if there was none."""
    subscriber = client if client is not None else pubsub_v1.SubscriberClient()
    try:
        subscriber.delete_subscription(request={"subscription": subscription})
    except gexc.NotFound:
        return False
    finally:
        if client is None:
            subscriber.close()
    return True


def topic_path(project: str, topic: str) -> str:
    return f"projects/{project}/topics/{topic}"


def subscription_path(project: str, subscription: str) -> str:
    return f"projects/{project}/subscriptions/{subscription}"
