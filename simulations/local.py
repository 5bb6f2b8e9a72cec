"""An in-process transport: parties' `Node`s called directly (tests and quick baselines).

The Flower simulation engine is the real path; this one runs the very same Node and protocol
code without Ray, so unit tests can inject dropouts and corrupt or replay messages. Under a
channel with a key holder (he), the key holder is one more in-process node, reached as party
`KEY_HOLDER` (0) like any party: its secret key stays in that object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedsynth.client_node.keyholder import KeyHolderNode
from fedsynth.client_node.node import DropOut, Node
from fedsynth.protocols.messages import KEY_HOLDER

Tamper = Callable[[int, bytes], bytes | None]


class LocalTransport:
    def __init__(self, nodes: Mapping[int, Node], *, tamper: Tamper | None = None,
                 key_holder: KeyHolderNode | None = None) -> None:
        if KEY_HOLDER in nodes:
            raise ValueError(f"party index {KEY_HOLDER} is the key holder's; parties are 1..n")
        self.nodes = dict(nodes)
        self.state: dict[int, bytes | None] = {p: None for p in nodes}
        self.tamper = tamper  # (party, reply) -> altered reply, or None to drop it
        self.key_holder = key_holder

    def parties(self) -> list[int]:
        return sorted(self.nodes)

    def exchange(self, requests: Mapping[int, bytes], *, timeout: float) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for p, data in requests.items():
            if p == KEY_HOLDER:
                if self.key_holder is None:
                    continue  # no key holder in this federation: no answer
                reply = self.key_holder.handle(data)
            else:
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
