"""Dispatch: where a valid record goes after the rules, and who decides its answer.

Pure parts: `config` (the routes and dispatcher settings from a TOML file), `message` (the
versioned JSON every stream gets), `kafka.producer_settings`.  I/O: one dispatcher per
destination (`store`, `jetstream`, `kafka`, `zmq_pub`, `log_lines`), all sharing the
batching of `base`, and the `router` that hands a record to its route's dispatchers and
turns the reliable one's verdict into 201, 200 or 503.
"""

from __future__ import annotations

from ..writer import Writer
from .base import Dispatcher, Observer
from .config import DispatchConfig, DispatchConfigError, Kind, ZmqMode


def check_workers(config: DispatchConfig, workers: int) -> None:
    if workers > 1 and Kind.ZMQ in config.kinds and config.zmq.mode is ZmqMode.BIND:
        raise DispatchConfigError(
            f"{config.source}: [zmq] mode = \"bind\" works with one worker only (two processes cannot "
            "bind one address); use mode = \"connect\" to a subscriber or proxy that binds")


def build_dispatchers(config: DispatchConfig, writer: Writer, observer: Observer) -> dict[Kind, Dispatcher]:
    """One dispatcher for each kind some route uses (the store always: it holds the counters)."""
    out: dict[Kind, Dispatcher] = {}
    for kind in sorted(config.kinds | {Kind.STORE}, key=lambda k: list(Kind).index(k)):
        if kind is Kind.STORE:
            from .store import StoreDispatcher

            out[kind] = StoreDispatcher(writer, observer)
        elif kind is Kind.NATS:
            from .jetstream import NatsDispatcher

            out[kind] = NatsDispatcher(config.nats, config.namespace, config.ack_timeout, observer)
        elif kind is Kind.KAFKA:
            from .kafka import KafkaDispatcher

            reliable = any(r.reliable is Kind.KAFKA for r in config.routes)
            out[kind] = KafkaDispatcher(config.kafka, reliable=reliable, ack_timeout=config.ack_timeout,
                                        observer=observer)
        elif kind is Kind.ZMQ:
            from .zmq_pub import ZmqDispatcher

            out[kind] = ZmqDispatcher(config.zmq, observer)
        else:
            from .log_lines import LogDispatcher

            out[kind] = LogDispatcher(observer)
    return out


__all__ = ["DispatchConfig", "DispatchConfigError", "Kind", "build_dispatchers", "check_workers"]
