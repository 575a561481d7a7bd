"""Routing incoming messages to their handlers by contract topic, for every service."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from broker_agent.logs import get_logger
from broker_agent.mqtt.client import Message
from firmware_contracts.topics import TopicKind, TopicMatch, Topics

log = get_logger(__name__)

Handler = Callable[[TopicMatch, Message], None]


class Router:
    """Hands each message to the handler of its topic kind; one bad message stops nothing.

    Runs synchronously on the event loop as messages arrive (``Connection``'s route), so a
    handler must not block: it queues work or completes a future.
    """

    def __init__(
        self,
        topics: Topics,
        handlers: Mapping[TopicKind, Handler],
        unmatched: Callable[[Message], None] | None = None,
    ) -> None:
        self.topics = topics
        self.handlers = dict(handlers)
        self.unmatched = unmatched  # sees what matches no handler (e.g. an invalid id)

    def __call__(self, message: Message) -> None:
        topic = message.topic
        match = self.topics.parse(topic)
        handler = self.handlers.get(match.kind) if match else None
        try:
            if match is not None and handler is not None:
                handler(match, message)
            elif self.unmatched is not None:
                self.unmatched(message)
            else:
                log.info("message_ignored", topic=topic[:200], reason="not a contract topic for us")
        except Exception:  # the one place that keeps a session alive: report and go on
            log.exception("message_handler_failed", topic=topic[:200])
