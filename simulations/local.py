"""An in-process transport: parties' `Node`s called directly (tests and quick baselines).

The Flower simulation engine is the real path; this one runs the very same Node and protocol
code without Ray, so unit tests can inject dropouts and corrupt or replay messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedsynth.client_node.node import DropOut, Node

Tamper = Callable[[int, bytes], bytes | None]


class LocalTransport:
    def __init__(self, nodes: Mapping[int, Node], *, tamper: Tamper | None = None) -> None:
        self.nodes = dict(nodes)
        self.state: dict[int, bytes | None] = {p: None for p in nodes}
        self.tamper = tamper  # (party, reply) -> altered reply, or None to drop it

    def parties(self) -> list[int]:
        return sorted(self.nodes)

    def exchange(self, requests: Mapping[int, bytes], *, timeout: float) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for p, data in requests.items():
            try:
                reply, self.state[p] = self.nodes[p].handle(data, self.state[p])
            except DropOut:
                continue
            if self.tamper is not None:
                altered = self.tamper(p, reply)
                if altered is None:
                    continue
                reply = altered
            out[p] = reply
        return out
