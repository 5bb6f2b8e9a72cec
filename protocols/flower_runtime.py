"""fedsynth's own runtimes for Flower's deployment engine, shared by the coordinator and the
parties, and the Control API calls of `fedsynth run` and `fedsynth coordinator start`.

Both sides run Flower's servers with `--isolation process`: the SuperLink (coordinator) and
each SuperNode (party) then only *offer* app tasks on their Runtime API, guarded by a
SuperExec secret, and do not start any app themselves. This module is the process that
claims those tasks (instead of `flower-superexec` + `flwr-serverapp` / `flwr-clientapp`):

1. every fedsynth run carries the same FAB, built deterministically from the installed
   fedsynth version (`fedsynth_fab`): a zip holding only a pyproject.toml that names the
   installed apps. Both sides compute its sha256 locally; that hash is the pin.
2. a claimed task whose FAB hash (announced, then of the bytes) is not the pin is refused
   before anything of it runs; the FAB bytes are hashed, never unpacked or imported.
3. the app that runs is the INSTALLED fedsynth app object, never code from the bundle.

Flower internals used (pinned: flwr==1.41.0; not public API):
  flwr.supercore.runtime.RuntimeHttpClient (AcquireTask, PullTaskInput, PullMessages,
      PullObject, ConfirmMessageReceived, PushMessages, PushObject, PushTaskOutput,
      SendTaskHeartbeat)
  flwr.supercore.interceptors.{RuntimeVersionHttpInterceptor, RuntimeTokenHttpInterceptor,
      SuperExecAuthHttpInterceptor}
  flwr.supercore.retry.make_simple_http_retry_invoker
  flwr.proto.runtime_pb2.{AcquireTaskRequest, PullTaskInputRequest, PullAppMessagesRequest,
      PushAppMessagesRequest, PushTaskOutputRequest, SendTaskHeartbeatRequest}
  flwr.proto.node_pb2.Node
  flwr.common.serde.{context_from_proto, context_to_proto, run_from_proto, message_to_proto,
      fab_to_proto, user_config_to_proto}
  flwr.supercore.inflatable.{inflatable_object, inflatable_utils, inflatable_protobuf_utils}
  flwr.app.message.remove_content_from_message
  flwr.supercore.task_identity.TaskIdentity (process-global: one task at a time)
  flwr.supercore.constant.TaskType, flwr.common.constant.{ErrorCode, SubStatus}
  flwr.superlink.grid.HttpGrid (token=..., ._runtime_client, .set_run, push/pull_messages)
  flwr.supercore.control.ControlHttpClient (StartRun, ListRuns, RegisterNode, ListNodes),
      flwr.proto.control_pb2.{StartRunRequest, ListRunsRequest, RegisterNodeRequest,
      ListNodesRequest}, flwr.supercore.fab.Fab
  flwr.cli.build.build_fab_from_files (deterministic zip: fixed timestamps and order)
  flwr.supernode.start_client_internal.time (the SuperNode's 3 s idle poll, shortened by
      `supernode_main`)
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger("fedsynth.runtime")

FLWR_VERSION = "1.41.0"
# The run config of a fedsynth run: strings given by `fedsynth run`, declared (empty) in the FAB.
RUN_CONFIG_KEYS = ("job-toml", "schema-json", "out")
POLL_SECONDS = 0.2  # AcquireTask and reply polling; Flower's own loops sleep 3 s
HEARTBEAT_SECONDS = 10.0
# a message whose content cannot be pulled within this time is given up (Flower waits up to
# 2 h: seen after a coordinator restart, when a stopped run's objects are gone and the party's
# runtime would otherwise sit on that task while the next job waits)
PULL_SECONDS = 60.0
ACQUIRE = "/flwr.proto.Runtime/AcquireTask"


class RefusedFab(Exception):
    """A task whose app bundle is not the pinned fedsynth FAB."""


def fedsynth_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedsynth")
    except PackageNotFoundError:
        return "0+unknown"


def check_flower_version() -> None:
    import flwr

    if flwr.__version__ != FLWR_VERSION:  # the internals above are of this version only
        raise RuntimeError(f"fedsynth's deployment needs flwr=={FLWR_VERSION}, found "
                           f"{flwr.__version__}: pip install flwr=={FLWR_VERSION}")


def quiet_flower() -> None:
    """Flower's own log lines (connection retries, API calls) off in our runtimes."""
    logging.getLogger("flwr").setLevel(logging.ERROR)


def fab_pyproject(version: str) -> bytes:
    config = "\n".join(f'{k} = ""' for k in RUN_CONFIG_KEYS)
    return f'''[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "fedsynth"
version = "{version}"
description = "fedsynth job: runs the installed fedsynth apps (no code in this bundle)"
license = "Apache-2.0"
dependencies = ["fedsynth=={version}", "flwr=={FLWR_VERSION}"]

[tool.flwr.app]
publisher = "fedsynth"

[tool.flwr.app.components]
serverapp = "fedsynth.coordinator.deploy:server_app"
clientapp = "fedsynth.client_node.deploy:client_app"

[tool.flwr.app.config]
{config}
'''.encode()


@cache
def fedsynth_fab(version: str | None = None) -> tuple[bytes, str]:
    """The FAB of every fedsynth run and its sha256 (the pin), from the installed version."""
    from flwr.cli.build import build_fab_from_files

    fab, _ = build_fab_from_files({"pyproject.toml": fab_pyproject(version or
                                                                   fedsynth_version())})
    return fab, hashlib.sha256(fab).hexdigest()


@dataclass(frozen=True)
class Endpoint:
    """A Runtime API (the SuperLink's public port, or a SuperNode's local port)."""

    address: str
    root_certificates: bytes | None  # None: plain HTTP (a SuperNode's loopback port)
    superexec_secret: bytes
    component: str = "SuperExec"

    def client(self, token: str | None = None) -> Any:
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
            SuperExecAuthHttpInterceptor,
        )
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name=self.component)]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        else:  # AcquireTask is the one call authenticated with the SuperExec secret
            interceptors.append(SuperExecAuthHttpInterceptor(
                master_secret=self.superexec_secret, protected_methods=frozenset({ACQUIRE})))
        return RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.root_certificates is None,
            root_certificates=self.root_certificates, interceptors=interceptors,
            retry_invoker=make_simple_http_retry_invoker())


def check_pin(pinned: Collection[str], announced: str, content: bytes | None = None,
              run_hash: str | None = None) -> None:
    """Raises RefusedFab unless the task's FAB is pinned (the bytes are hashed only)."""
    if announced not in pinned:
        raise RefusedFab(f"refused: app bundle {announced[:16]}… is not fedsynth "
                         f"{fedsynth_version()}'s (pinned {', '.join(p[:16] for p in pinned)}…)")
    if content is not None:
        sha = hashlib.sha256(content).hexdigest()
        if sha != announced or (run_hash is not None and run_hash != announced):
            raise RefusedFab(f"refused: app bundle bytes hash {sha[:16]}… differ from the "
                             f"announced {announced[:16]}…")


class _Heartbeat:
    """Keeps a claimed task alive; a refused heartbeat is logged, never fatal to the loop."""

    def __init__(self, client: Any) -> None:
        self.client, self.stop = client, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                if not self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success:
                    log.warning("task heartbeat refused")
            except Exception as err:
                log.warning("task heartbeat failed: %s", err)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def serve(ep: Endpoint, task_type: str, handle: Callable[[str, Any], None],
          stop: threading.Event) -> None:
    """Claim tasks of `task_type` from the Runtime API until `stop`; one at a time."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest

    acquirer = ep.client()
    warned = 0.0
    try:
        while not stop.is_set():
            try:
                res = acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=[task_type]))
            except Exception as err:  # the server is (re)starting: keep polling
                if time.monotonic() - warned > 30:
                    log.info("waiting for the Runtime API at %s (%s)", ep.address,
                             type(err).__name__)
                    warned = time.monotonic()
                stop.wait(1.0)
                continue
            if res.HasField("task") and res.token:
                try:
                    handle(res.token, res.task)
                except Exception:
                    log.exception("task %s failed", res.task.task_id)
            else:
                stop.wait(POLL_SECONDS)
    finally:
        acquirer.close()


def _set_identity(task_id: int, run_id: int, node_id: int) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    # Message(...) without reply_to reads this process-global identity
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task_id, run_id, node_id


def _push_output(client: Any, context: Any, status: str, details: str) -> None:
    from flwr.common.serde import context_to_proto
    from flwr.proto.runtime_pb2 import PushTaskOutputRequest

    try:
        client.PushTaskOutput(PushTaskOutputRequest(
            context=context_to_proto(context) if context is not None else None,
            sub_status=status, details=details[:2000]))
    except Exception as err:  # after a stop the token is revoked
        log.warning("could not finish the task (run stopped?): %s", err)


# ---- the party side: ClientApp tasks on the SuperNode's Runtime API ----

def _pull_message(client: Any, context: Any) -> Any:
    from flwr.app import Message
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree

    res = client.PullMessages(PullAppMessagesRequest())
    if not res.messages_list:
        raise RuntimeError("no message for this task")
    node = Node(node_id=context.node_id)
    tree = res.message_object_trees[0]
    msg = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node,
                                                  context.run_id),
        return_type=Message, max_time=PULL_SECONDS)
    msg.metadata.__dict__["_message_id"] = tree.object_id
    return msg


def _push_message(client: Any, reply: Any, context: Any) -> None:
    from flwr.app.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PushAppMessagesRequest
    from flwr.supercore.inflatable.inflatable_object import (
        get_all_nested_objects,
        get_object_tree,
        no_object_id_recompute,
    )
    from flwr.supercore.inflatable.inflatable_protobuf_utils import make_push_object_fn_protobuf
    from flwr.supercore.inflatable.inflatable_utils import push_objects

    reply.metadata.__dict__["_message_id"] = reply.object_id
    proto = message_to_proto(remove_content_from_message(reply))
    with no_object_id_recompute():
        tree = get_object_tree(reply)
        res = client.PushMessages(PushAppMessagesRequest(messages_list=[proto],
                                                         message_object_trees=[tree]))
        push_objects(get_all_nested_objects(reply),
                     make_push_object_fn_protobuf(client.PushObject,
                                                  Node(node_id=context.node_id),
                                                  run_id=context.run_id,
                                                  session_id=res.session_id),
                     object_ids_to_push=set(res.objects_to_push))


def client_task(ep: Endpoint, app: Any, pinned: Collection[str]) -> Callable[[str, Any], None]:
    """The handler of one ClientApp task: the installed `app` answers one message; a task of
    another FAB gets an INVALID_FAB error reply and a FAILED status."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.common.serde import context_from_proto, run_from_proto
    from flwr.proto.runtime_pb2 import PullTaskInputRequest

    def handle(token: str, task: Any) -> None:
        client = ep.client(token)
        context = None
        status, details = SubStatus.FAILED, "party runtime failed"
        try:
            with _Heartbeat(client):
                res = client.PullTaskInput(PullTaskInputRequest())
                context = context_from_proto(res.context)
                _set_identity(res.task_id, res.run.run_id, res.context.node_id)
                run = run_from_proto(res.run)
                message = _pull_message(client, context)
                try:
                    check_pin(pinned, task.fab_hash, res.fab.content, run.fab_hash)
                    reply = app(message=message, context=context)  # may change context.state
                    status, details = SubStatus.COMPLETED, ""
                except RefusedFab as err:
                    log.error("run %s: %s", run.run_id, err)
                    reply = Message(Error(code=ErrorCode.INVALID_FAB, reason=str(err)),
                                    reply_to=message)
                    details = str(err)
                except Exception as err:  # the app raised: an error reply, as flwr-clientapp
                    log.exception("the party app raised")
                    reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                          reason=type(err).__name__), reply_to=message)
                    details = f"the party app raised {type(err).__name__}"
                _push_message(client, reply, context)
        finally:  # always finish the task: its context carries context.state onward
            _push_output(client, context, status, details)
            client.close()

    return handle


# ---- the coordinator side: ServerApp tasks on the SuperLink's Runtime API ----

class PollingGrid:
    """A Grid whose send_and_receive polls every POLL_SECONDS (HttpGrid's sleeps 3 s)."""

    def __init__(self, grid: Any) -> None:
        self._grid = grid

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Any], *,
                         timeout: float | None = None) -> list[Any]:
        ids = set(self._grid.push_messages(messages))
        end = time.time() + (timeout if timeout is not None else 0.0)
        out: list[Any] = []
        while ids and (timeout is None or time.time() < end):
            got = list(self._grid.pull_messages(ids))
            out += got
            ids -= {m.metadata.reply_to_message_id for m in got}
            if ids:
                time.sleep(POLL_SECONDS)
        return out


def server_task(ep: Endpoint, app: Callable[[Any, Any], None], pinned: Collection[str],
                defaults: dict[str, str]) -> Callable[[str, Any], None]:
    """The handler of one ServerApp task: checks the pin before pulling anything, then calls
    `app(grid, context)` (the installed ServerApp) with the run config (`defaults` updated by
    the run's overrides; the FAB is not read). An exception fails the run with its message
    as the run's status details."""
    from flwr.common.constant import SubStatus
    from flwr.common.serde import context_from_proto, run_from_proto
    from flwr.proto.runtime_pb2 import PullTaskInputRequest
    from flwr.superlink.grid import HttpGrid

    def handle(token: str, task: Any) -> None:
        grid = HttpGrid(runtime_api_address=ep.address, insecure=ep.root_certificates is None,
                        root_certificates=ep.root_certificates, token=token)
        client = grid._runtime_client  # token-bound RuntimeHttpClient
        context = None
        status, details = SubStatus.FAILED, "coordinator runtime failed"
        t0 = time.monotonic()
        try:
            with _Heartbeat(client):
                check_pin(pinned, task.fab_hash)
                res = client.PullTaskInput(PullTaskInputRequest())
                run = run_from_proto(res.run)
                check_pin(pinned, task.fab_hash, res.fab.content, run.fab_hash)
                context = context_from_proto(res.context)
                _set_identity(res.task_id, res.run.run_id, res.context.node_id)
                context.run_config = {**defaults, **dict(run.override_config)}
                grid.set_run(run)
                log.info("run %s: started", run.run_id)
                app(PollingGrid(grid), context)
                status, details = SubStatus.COMPLETED, ""
        except RefusedFab as err:
            details = str(err)
            log.error("run %s: %s", task.run_id, err)
        except Exception as err:
            details = str(err) or type(err).__name__
            log.error("run %s failed: %s", task.run_id, details)
        finally:
            if context is not None:
                from flwr.app import RecordDict

                context.state = RecordDict()  # as flwr-serverapp does
            _push_output(client, context, status, details)
            grid.close()
            log.info("run %s finished: %s in %.1f s", task.run_id, status,
                     time.monotonic() - t0)

    return handle


# ---- the Control API (submit, status, node registration) ----

def control_client(address: str, ca_pem: bytes) -> Any:
    from flwr.supercore.control import ControlHttpClient

    return ControlHttpClient.from_server_address(server_address=address, insecure=False,
                                                 root_certificates=ca_pem, interceptors=[])


def register_node(control: Any, name: str, openssh_public_key: str) -> bool:
    """Register a party's node key (idempotent); True when newly registered."""
    from cryptography.hazmat.primitives import serialization as ser
    from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest

    key = ser.load_ssh_public_key(openssh_public_key.encode())
    der = key.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    known = {bytes(n.public_key) for n in control.ListNodes(ListNodesRequest()).nodes_info
             if not n.unregistered_at}
    if der in known:
        return False
    control.RegisterNode(RegisterNodeRequest(public_key=der, name=name))
    return True


def submit_run(control: Any, config: dict[str, str], fab: bytes | None = None) -> int:
    """Start a run of the fedsynth FAB (or `fab`) with `config`; returns the run id."""
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    content = fab if fab is not None else fedsynth_fab()[0]
    res = control.StartRun(StartRunRequest(
        fab=fab_to_proto(Fab(hashlib.sha256(content).hexdigest(), content, {})),
        override_config=user_config_to_proto(dict(config))))
    if not res.run_id:
        raise RuntimeError("the coordinator did not accept the run")
    return int(res.run_id)


def run_status(control: Any, run_id: int) -> tuple[str, str, str]:
    """(status, sub_status, details) of a run, e.g. ("finished", "failed", "...")."""
    from flwr.proto.control_pb2 import ListRunsRequest

    st = control.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id].status
    return st.status, st.sub_status, st.details


def stop_orphaned_runs(control: Any) -> list[int]:
    """Mark stopped every run a previous life of this coordinator left starting or running
    (its ServerApp died with it, so nobody will finish it); returns their ids. Pending runs
    are left to be claimed as usual."""
    from flwr.proto.control_pb2 import ListRunsRequest, StopRunRequest

    stopped = []
    for run_id, run in control.ListRuns(ListRunsRequest()).run_dict.items():
        if run.status.status in ("starting", "running"):
            control.StopRun(StopRunRequest(run_id=run_id))
            stopped.append(int(run_id))
    return stopped


# ---- processes ----

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def write_secret_file(folder: Path) -> Path:
    """A fresh SuperExec secret (32 random bytes), readable by its owner only."""
    path = folder / "superexec.secret"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path


def supernode_main() -> None:
    """`flower-supernode` with its idle poll (3 s) shortened to POLL_SECONDS."""
    import sys
    import time as real_time

    import flwr.supernode.start_client_internal as sci
    from flwr.supernode.cli.flower_supernode import flower_supernode

    class _Time:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            real_time.sleep(min(seconds, POLL_SECONDS))

    sci.time = _Time()  # type: ignore[assignment]
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    supernode_main()
