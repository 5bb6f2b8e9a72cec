"""The party as a Flower ClientApp: unwraps the Envelope bytes and calls `Node.handle`."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsynth.client_node.node import Node, NodePolicy
from fedsynth.protocols.messages import HELLO_KEY, RECORD_KEY

STATE_KEY = "fedsynth-session"


def make_client_app(policy_for: Callable[[Context], NodePolicy]) -> ClientApp:
    """A ClientApp whose party policy comes from the node's context (its node config)."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        if HELLO_KEY in msg.content.config_records:  # "which party are you?" (names are public)
            name = policy_for(context).party_name
            return Message(RecordDict({HELLO_KEY: ConfigRecord({"party": name})}), reply_to=msg)
        record = msg.content.config_records.get(RECORD_KEY)
        payload = record.get("payload") if record is not None else None
        if not isinstance(payload, bytes):
            payload = b"\xff"  # not an Envelope: Node.handle answers with a refusal
        state = context.state.config_records.get(STATE_KEY)
        session = state.get("session") if state is not None else None
        reply, new_session = Node(policy_for(context)).handle(
            payload, session if isinstance(session, bytes) else None)
        if new_session is not None:
            context.state[STATE_KEY] = ConfigRecord({"session": new_session})
        return Message(RecordDict({RECORD_KEY: ConfigRecord({"payload": reply})}), reply_to=msg)

    return app
