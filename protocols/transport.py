"""What the coordinator needs from a transport: send bytes to parties, get bytes back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Transport(Protocol):
    """Delivers one request per party and returns the replies that arrived in time.

    A party missing from the result dropped out (no reply, or an error in its app).
    """

    def parties(self) -> list[int]:
        """Party indices 1..n reachable for this job."""
        ...

    def exchange(self, requests: Mapping[int, bytes], *, timeout: float) -> dict[int, bytes]:
        ...
