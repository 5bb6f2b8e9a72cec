"""The coordinator as a Flower ServerApp, with the Grid as the job's transport."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsynth.protocols.messages import RECORD_KEY
from fedsynth.protocols.secure_sum import RoundFailed


class GridTransport:
    """Maps party indices 1..n to Flower node ids (sorted) and exchanges Envelope bytes."""

    def __init__(self, grid: Grid, expected: int, *, wait: float = 120.0) -> None:
        self.grid = grid
        deadline = time.monotonic() + wait
        ids: list[int] = []
        while time.monotonic() < deadline:
            ids = sorted(grid.get_node_ids())
            if len(ids) >= expected:
                break
            time.sleep(0.1)
        if len(ids) < expected:
            raise RoundFailed(f"only {len(ids)} of {expected} party nodes connected within "
                              f"{wait:.0f} s; check that every party's node is running")
        self.node_of = {i + 1: nid for i, nid in enumerate(ids[:expected])}
        self.party_of = {nid: p for p, nid in self.node_of.items()}

    def parties(self) -> list[int]:
        return sorted(self.node_of)

    def exchange(self, requests: Mapping[int, bytes], *, timeout: float) -> dict[int, bytes]:
        msgs = [Message(RecordDict({RECORD_KEY: ConfigRecord({"payload": data})}),
                        dst_node_id=self.node_of[p], message_type="query")
                for p, data in requests.items()]
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


def make_server_app(job: Callable[[GridTransport], None], expected_parties: int) -> ServerApp:
    """A ServerApp that waits for the parties and runs `job` over the grid."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        job(GridTransport(grid, expected_parties))

    return app
