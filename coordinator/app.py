"""The coordinator as a Flower ServerApp, with the Grid as the job's transport."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsynth.protocols.messages import HELLO_KEY, KEY_HOLDER, KEY_HOLDER_HELLO, RECORD_KEY
from fedsynth.protocols.secure_sum import RoundFailed


class GridTransport:
    """Maps the job's parties (by name: party i is names[i - 1]) to Flower node ids and
    exchanges Envelope bytes.

    Each node is asked which party it is; the answer is only a routing hint, never trusted:
    a node that claims another party's name is refused by that party's identity checks (the
    spec names each party with its identity key, and every reply is signed with it).

    Waits up to `wait` seconds for every party's node, then goes on with those connected if
    they are at least `minimum` (default: all); the job decides whether that is enough.

    With `key_holder` (the he channel's key holder's name), the node that answers the hello
    as that key holder is reached as party `KEY_HOLDER` (0); `parties()` lists only 1..n. Its
    answer is a routing hint too: the key holder's replies carry its identity signature, which
    the coordinator and every party check against the key holder the spec names."""

    def __init__(self, grid: Grid, names: Sequence[str], *, wait: float = 120.0,
                 minimum: int | None = None, key_holder: str | None = None) -> None:
        self.grid = grid
        expected = len(names) + (key_holder is not None)
        deadline = time.monotonic() + wait
        ids: list[int] = []
        while time.monotonic() < deadline:
            ids = sorted(grid.get_node_ids())
            if len(ids) >= expected:
                break
            time.sleep(0.1)
        if len(ids) < (expected if minimum is None else minimum):
            raise RoundFailed(f"only {len(ids)} of {expected} party nodes connected within "
                              f"{wait:.0f} s; check that every party's node is running")
        index = {name: i + 1 for i, name in enumerate(names)}
        hello = [Message(RecordDict({HELLO_KEY: ConfigRecord({"hello": 1})}), dst_node_id=nid,
                         message_type="query") for nid in ids]
        self.node_of: dict[int, int] = {}
        for reply in grid.send_and_receive(hello, timeout=wait):
            record = None if reply.has_error() else reply.content.config_records.get(HELLO_KEY)
            name = record.get("party") if record is not None else None
            holder = record.get(KEY_HOLDER_HELLO) if record is not None else None
            if isinstance(name, str) and name in index and index[name] not in self.node_of:
                self.node_of[index[name]] = reply.metadata.src_node_id
            elif key_holder is not None and holder == key_holder \
                    and KEY_HOLDER not in self.node_of:
                self.node_of[KEY_HOLDER] = reply.metadata.src_node_id
        self.party_of = {nid: p for p, nid in self.node_of.items()}

    def parties(self) -> list[int]:
        return sorted(p for p in self.node_of if p != KEY_HOLDER)

    def exchange(self, requests: Mapping[int, bytes], *, timeout: float) -> dict[int, bytes]:
        msgs = [Message(RecordDict({RECORD_KEY: ConfigRecord({"payload": data})}),
                        dst_node_id=self.node_of[p], message_type="query")
                for p, data in requests.items() if p in self.node_of]  # else: no answer
        out: dict[int, bytes] = {}
        for reply in self.grid.send_and_receive(msgs, timeout=timeout):
            if reply.has_error():
                continue  # the party's app failed: it dropped out of this step
            party = self.party_of.get(reply.metadata.src_node_id)
            record = reply.content.config_records.get(RECORD_KEY)
            payload = record.get("payload") if record is not None else None
            if party is not None and isinstance(payload, bytes):
                out[party] = payload
        return out


def make_server_app(job: Callable[[GridTransport], None], names: Sequence[str], *,
                    key_holder: str | None = None) -> ServerApp:
    """A ServerApp that waits for the parties (named as in the job spec) and, with
    `key_holder`, for the key holder's node, and runs `job`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        job(GridTransport(grid, names, key_holder=key_holder))

    return app
