"""The store as a dispatcher: the writer thread's group commit (writer.py) does the batching."""

from __future__ import annotations

import asyncio

from ..model import NewRecord
from ..writer import Writer
from .base import Dispatcher, Observer
from .config import Kind
from .message import Message


class StoreDispatcher(Dispatcher):
    """Its futures end with the writer's `Reply` (201 stored, 200 a repeat) or a `StoreError`."""

    kind = Kind.STORE

    def __init__(self, writer: Writer, observer: Observer):
        super().__init__(observer)
        self.writer = writer

    def submit(self, record: NewRecord, message: Message | None) -> asyncio.Future:
        return self.writer.submit(record)
