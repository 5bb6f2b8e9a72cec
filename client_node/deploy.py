"""A party's node, deployed on Flower's deployment engine (`fedsynth node start`).

One process owns it all: it loads the party's policy (on this machine only), starts
`flower-supernode` (TLS against the consortium's CA, the party's node-authentication key,
`--isolation process` with a fresh SuperExec secret, its Runtime API on a free loopback
port) and claims every ClientApp task itself (protocols.flower_runtime): a task whose app
bundle is not the pinned fedsynth FAB gets an error reply; any other is answered by the
INSTALLED party app (client_node.app) under the loaded policy. The node only dials out to
the coordinator; it listens on nothing reachable from outside this machine.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from flwr.app import Context
from flwr.supercore.constant import TaskType

from fedsynth import scratch
from fedsynth.client_node.app import make_client_app
from fedsynth.client_node.keyholder import KeyHolderPolicy
from fedsynth.client_node.node import NodePolicy
from fedsynth.client_node.policy_file import load_policy
from fedsynth.crypto.keyfiles import CA_CERT, NODE_KEY
from fedsynth.protocols import flower_runtime as rt

log = logging.getLogger("fedsynth.deploy")
# set by start_node / start_key_holder: this node's policy, read on this machine only
_policy: dict[str, NodePolicy | KeyHolderPolicy] = {}


RESTART_SECONDS = 5.0  # first wait before restarting a SuperNode that stopped


class NodeStartError(RuntimeError):
    """The node could not start; the message says why and how to fix it."""


def _policy_for(context: Context) -> NodePolicy | KeyHolderPolicy:
    pol = _policy.get("policy")
    if pol is None:
        raise RuntimeError("this party runtime has no policy loaded")
    return pol


client_app = make_client_app(_policy_for)  # the installed ClientApp the fedsynth FAB names


def start_node(coordinator: str, keys_dir: Path, policy_path: Path, *,
               log_file: Path | None = None,
               ready: threading.Event | None = None,
               stop: threading.Event | None = None) -> None:
    """Run the party's node until `stop` is set (or SIGTERM / Ctrl-C). Raises
    PolicyFileError for a bad policy, NodeStartError when the SuperNode cannot run."""
    rt.check_flower_version()
    keys_dir = Path(keys_dir)
    policy = load_policy(policy_path, keys=keys_dir)
    _serve(coordinator, keys_dir, policy, policy.party_name,
           Path(log_file or Path(policy_path).resolve().parent / "supernode.log"), ready, stop)


def start_key_holder(coordinator: str, keys_dir: Path, *, log_file: Path | None = None,
                     ready: threading.Event | None = None,
                     stop: threading.Event | None = None) -> None:
    """Run the he channel's key holder until `stop` (or SIGTERM / Ctrl-C): a node of the
    federation like a party's, answering with the installed key-holder app
    (client_node.keyholder) under its own identity key. Its name is the one consortium.toml
    lists for that key under [key_holders]. Raises NodeStartError when it cannot run."""
    from fedsynth.crypto.keyfiles import (
        CONSORTIUM,
        IDENTITY_KEY,
        Consortium,
        KeyFileError,
        read_identity,
    )
    from fedsynth.crypto.keys import public_identity

    rt.check_flower_version()
    keys_dir = Path(keys_dir)
    try:
        cons = Consortium.load(keys_dir / CONSORTIUM)
        identity = read_identity(keys_dir / IDENTITY_KEY)
    except KeyFileError as exc:
        raise NodeStartError(str(exc)) from None
    mine = public_identity(identity)
    names = [n for n, key in cons.key_holders.items() if key == mine]
    if not names:
        raise NodeStartError(f"--keys {keys_dir}: this identity key is not a key holder's in "
                             f"{CONSORTIUM} (its key holders: "
                             f"{', '.join(cons.key_holders) or 'none'}); give the key holder's "
                             "folder from `fedsynth keys init --key-holders`")
    policy = KeyHolderPolicy(name=names[0], identity_key=identity)
    _serve(coordinator, keys_dir, policy, f"key holder {names[0]}",
           Path(log_file or keys_dir / "supernode.log"), ready, stop)


def _serve(coordinator: str, keys_dir: Path, policy: NodePolicy | KeyHolderPolicy, who: str,
           log_file: Path, ready: threading.Event | None,
           stop: threading.Event | None) -> None:
    """A SuperNode for this node and its runtime answering with the installed app."""
    rt.quiet_flower()
    for need in (keys_dir / NODE_KEY, keys_dir / CA_CERT):
        if not need.is_file():
            raise NodeStartError(f"--keys {keys_dir}: missing {need.name}; give the member's "
                                 "folder from `fedsynth keys init`")
    _policy["policy"] = policy
    _, pin = rt.fedsynth_fab()
    stop = stop or threading.Event()
    with scratch.folder("fedsynth-node-") as tmp:
        secret = rt.write_secret_file(tmp)
        port = rt.free_port()
        cmd = [sys.executable, "-m", "fedsynth.protocols.flower_runtime",
               "--superlink", coordinator,
               "--root-certificates", str((keys_dir / CA_CERT).resolve()),
               "--auth-supernode-private-key", str((keys_dir / NODE_KEY).resolve()),
               "--isolation", "process", "--superexec-auth-secret-file", str(secret),
               "--host", "127.0.0.1", "--port", str(port)]
        env = {**os.environ, "FLWR_HOME": str(tmp / "flwr-home"),
               "FLWR_TELEMETRY_ENABLED": "0"}
        def launch() -> subprocess.Popen[bytes]:
            with log_file.open("ab") as out:
                return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)

        proc = launch()
        try:
            ep = rt.Endpoint(f"127.0.0.1:{port}", None, secret.read_bytes(),
                             component="flwr-clientapp")
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
            runtime = threading.Thread(target=rt.serve, daemon=True, args=(
                ep, TaskType.CLIENT_APP, rt.client_task(ep, client_app, {pin}), stop))
            runtime.start()
            log.info("node of %s: connecting to %s (fedsynth %s, app bundle sha256 %s); "
                     "SuperNode log %s", who, coordinator, rt.fedsynth_version(),
                     pin, log_file)
            if ready is not None:
                ready.set()
            backoff = RESTART_SECONDS
            while not stop.wait(0.5):
                if proc.poll() is None:
                    continue
                # e.g. the coordinator is not up yet, or has not registered this node's key:
                # the SuperNode gives up at once; try again, and say why each time
                why = _reason(log_file)
                log.warning("the SuperNode stopped (exit %s: %s); retrying in %.0f s",
                            proc.returncode, why, backoff)
                if stop.wait(backoff):
                    break
                backoff = min(2 * backoff, 60.0)
                proc = launch()
            runtime.join(timeout=5)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _reason(log_file: Path) -> str:
    """The SuperNode's own explanation of why it stopped (from its log), in one line."""
    lines = log_file.read_text(errors="replace").strip().splitlines()[-40:]
    useful = [ln.strip() for ln in lines if "SuperLink" in ln or "code:" in ln
              or "Exit Code" in ln]
    return " ".join(useful[-3:])[:300] or "see its log"
