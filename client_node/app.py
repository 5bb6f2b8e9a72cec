"""The party (or the he channel's key holder) as a Flower ClientApp: unwraps the Envelope bytes
and calls `Node.handle` (or `KeyHolderNode.handle`)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsynth.client_node.keyholder import KeyHolderNode, KeyHolderPolicy
from fedsynth.client_node.node import Node, NodePolicy
from fedsynth.protocols.messages import HELLO_KEY, KEY_HOLDER_HELLO, RECORD_KEY

STATE_KEY = "fedsynth-session"


def make_client_app(policy_for: Callable[[Context], NodePolicy | KeyHolderPolicy]) -> ClientApp:
    """A ClientApp whose policy comes from the node's context (its node config): a party's
    `NodePolicy`, or a `KeyHolderPolicy` for the node that serves as the key holder.

    State between messages is the node's own (`context.state`): a party's session, or the key
    holder's jobs with their secret keys, which never leave that node in a message."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        policy = policy_for(context)
        if HELLO_KEY in msg.content.config_records:  # "which party are you?" (names are public)
            answer = (ConfigRecord({KEY_HOLDER_HELLO: policy.name})
                      if isinstance(policy, KeyHolderPolicy)
                      else ConfigRecord({"party": policy.party_name}))
            return Message(RecordDict({HELLO_KEY: answer}), reply_to=msg)
        record = msg.content.config_records.get(RECORD_KEY)
        payload = record.get("payload") if record is not None else None
        if not isinstance(payload, bytes):
            payload = b"\xff"  # not an Envelope: Node.handle answers with a refusal
        state = context.state.config_records.get(STATE_KEY)
        session = state.get("session") if state is not None else None
        saved = session if isinstance(session, bytes) else None
        new_session: bytes | None
        if isinstance(policy, KeyHolderPolicy):
            holder = KeyHolderNode.from_state(policy, saved)
            reply = holder.handle(payload)
            new_session = holder.to_state()
        else:
            reply, new_session = Node(policy).handle(payload, saved)
        if new_session is not None:
            context.state[STATE_KEY] = ConfigRecord({"session": new_session})
        return Message(RecordDict({RECORD_KEY: ConfigRecord({"payload": reply})}), reply_to=msg)

    return app
