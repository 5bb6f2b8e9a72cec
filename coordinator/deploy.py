"""The coordinator, deployed on Flower's deployment engine (`fedsynth coordinator start`).

One process owns it all: it starts `flower-superlink` (TLS with the consortium's
certificate, node authentication, `--isolation process` guarded by a fresh SuperExec secret,
state in SQLite), registers every party's node key from its own consortium.toml through the
Control API, and then claims each run's ServerApp task itself (protocols.flower_runtime):
a run whose app bundle is not the pinned fedsynth FAB is refused before anything runs.

A run carries the analyst's job file and schema as text, and the output folder, in its run
config (`fedsynth run` sets them). The coordinator checks the job as `load_job` does against
its OWN consortium.toml (the identity keys in the job spec come from there, never from the
run), runs it over the parties' nodes (matched by party name, see coordinator.app), and
writes the outputs into the folder on this machine, all or nothing. A failed job writes
nothing and ends the run as failed with the reason in its status details.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.constant import TaskType

from fedsynth import scratch
from fedsynth.coordinator.app import GridTransport
from fedsynth.coordinator.exchange import JobRefused
from fedsynth.coordinator.job import run_job
from fedsynth.coordinator.job_file import job_from_text
from fedsynth.crypto.keyfiles import CA_CERT, CONSORTIUM, SERVER_CERT, SERVER_KEY, Consortium
from fedsynth.evaluation.output import Content, check_out, write_folder
from fedsynth.evaluation.report import render_or_none
from fedsynth.protocols import flower_runtime as rt
from fedsynth.protocols.messages import KEY_HOLDER
from fedsynth.synthesis import table_file

log = logging.getLogger("fedsynth.coordinator")
_consortium: dict[str, Consortium] = {}  # set by start_coordinator: this coordinator's list
_outputs: dict[str, Path] = {}  # set by start_coordinator: where jobs' output folders go


class CoordinatorError(RuntimeError):
    """The coordinator could not start; the message says why and how to fix it."""


def output_name(text: str) -> str:
    """A job's output folder as the submitter names it: a relative name (`runs/joint`), never
    an absolute path or one climbing out with `..`; the coordinator puts it under its own
    outputs folder. Whoever can submit a job can therefore choose only a new folder there."""
    p = Path(text)
    if not text or p.is_absolute() or ".." in p.parts:
        raise ValueError(f"output folder {text!r}: give a relative name such as runs/joint; "
                         "it is made inside the coordinator's outputs folder")
    return p.as_posix()


def outputs_folder(root: Path, text: str) -> Path:
    out = (root / output_name(text)).resolve()
    if root.resolve() not in out.parents:
        raise ValueError(f"output folder {text!r} is not inside the coordinator's outputs folder")
    return out


def _consortium_outputs() -> Path:
    root = _outputs.get("root")
    if root is None:
        raise RuntimeError("this coordinator runtime has no outputs folder set")
    return root


def _run(grid: Grid, context: Context) -> None:
    cons = _consortium.get("consortium")
    if cons is None:
        raise RuntimeError("this coordinator runtime has no consortium loaded")
    cfg = context.run_config
    job_text, schema_json, out_text = (str(cfg.get(k, "")) for k in rt.RUN_CONFIG_KEYS)
    if not job_text or not schema_json or not out_text:
        raise ValueError("the run lacks its job, schema or output folder (submit it with "
                         "`fedsynth run`)")
    job = job_from_text(job_text, schema_json, cons)  # JobFileError: the run fails with it
    out = check_out(outputs_folder(_consortium_outputs(), out_text))  # before any budget
    lines: list[str] = []
    handler = _Lines(lines)
    logger = logging.getLogger("fedsynth")
    logger.addHandler(handler)
    try:
        say = log.info
        say("run %s: job among %s, ε=%g, δ=%g, output %s", context.run_id,
            ", ".join(job.spec.party_names), job.spec.epsilon, job.spec.delta, out)
        # a party whose node is not connected is missing from the job, as one that drops out
        # later is; the job goes on if the others still reach the threshold
        transport = GridTransport(grid, job.spec.party_names, minimum=job.spec.threshold,
                                  key_holder=job.key_holder)
        if job.key_holder is not None and KEY_HOLDER not in transport.node_of:
            raise RuntimeError(f"the key holder {job.key_holder!r} did not answer (is "
                               "`fedsynth keyholder start` running and connected?)")
        missing = [n for i, n in enumerate(job.spec.party_names, 1)
                   if i not in transport.node_of]
        if len(missing) > len(job.spec.party_names) - job.spec.threshold:
            raise RuntimeError(f"parties {missing} did not answer (their nodes are not "
                               "running or not connected)")
        if missing:
            log.warning("parties %s did not answer (their nodes are not running or not "
                        "connected); the job goes on without them", missing)
        try:
            result = run_job(transport, job.spec, job.options, lambda m: log.info("%s", m))
        except JobRefused as exc:  # name each party as the consortium does, not by number
            names = job.spec.party_names
            raise RuntimeError("the job was refused: " + "; ".join(
                f"{names[p - 1] if 0 < p <= len(names) else f'party {p}'} refused: "
                f"{r.reason}" + "".join(f" ({q})" for q in r.problems)
                for p, r in sorted(exc.refusals.items()))) from None
    finally:
        logger.removeHandler(handler)
    spec = job.spec
    metrics: dict[str, Any] = dict(result.evaluation or {})
    if result.evaluation_error:
        metrics["evaluation_error"] = result.evaluation_error
    metrics["job"] = {"parties": spec.parties, "partition": "each party's own rows",
                      "threshold_t": result.privacy.get("threshold_t"),
                      "colluders_c": result.privacy.get("colluders_c"),
                      "channel": result.privacy.get("channel"),
                      "marginals": result.privacy.get("marginals", []),
                      "epsilon": spec.epsilon, "delta": spec.delta, "real_side": "held_out",
                      "real_rows": "the parties' held-out rows (each party's holdout file)"}
    metrics["steps"] = result.steps
    metrics["timings_seconds"] = result.timings
    metrics["bytes_sent_per_party"] = {spec.party_names[k - 1]: v
                                       for k, v in result.bytes_from_party.items()}
    files: dict[str, Content] = {
        table_file.file_name("synthetic", job.output_format): table_file.writer(
            result.synthetic, job.output_format),
        "privacy.json": json.dumps(result.privacy, indent=2, default=_json),
        "metrics.json": json.dumps(metrics, indent=2, default=_json),
        "schema.json": spec.schema.to_json(),
        "job.toml": job_text,
        "job.log": "\n".join(lines) + "\n",
    }
    if result.model is not None:  # model.json, model.npz: more rows later (`fedsynth sample`)
        files.update(result.model.files())
    page = None if result.evaluation is None else render_or_none(
        metrics, privacy=result.privacy,
        title=f"fedsynth: {len(spec.party_names)} parties, ε={spec.epsilon}")
    if page is not None:
        files["report.html"] = page
    files["metrics.json"] = json.dumps(metrics, indent=2, default=_json)  # with any report_error
    write_folder(out, files)
    log.info("run %s: wrote %s (%d synthetic rows)", context.run_id, out,
             len(result.synthetic))


server_app = ServerApp()  # the installed ServerApp the fedsynth FAB names


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    _run(grid, context)


class _Lines(logging.Handler):
    """job.log: the coordinator's lines (never a party's own log, nor the runtime's)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("fedsynth.node", "fedsynth.runtime")):
            self.lines.append(self.format(record))


def _json(o: object) -> object:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _files(keys_dir: Path) -> tuple[Consortium, bytes, Path, Path, Path]:
    keys_dir = Path(keys_dir)
    need = [keys_dir / CA_CERT, keys_dir / "coordinator" / SERVER_CERT,
            keys_dir / "coordinator" / SERVER_KEY, keys_dir / "coordinator" / CONSORTIUM]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        raise CoordinatorError(f"--keys {keys_dir}: missing {', '.join(missing)}; give the "
                               "folder `fedsynth keys init --out` made")
    cons = Consortium.load(keys_dir / "coordinator" / CONSORTIUM)
    no_key = [n for n in cons.identities if not cons.node_keys.get(n)]
    if no_key:
        raise CoordinatorError(f"consortium.toml lists no node_key for {no_key}: add each "
                               "party's node-auth.pub line")
    return cons, need[0].read_bytes(), need[0], need[1], need[2]


def start_coordinator(keys_dir: Path, port: int, host: str = "127.0.0.1", *,
                      state_dir: Path | None = None, outputs: Path | None = None,
                      ready: threading.Event | None = None,
                      stop: threading.Event | None = None) -> None:
    """Run the coordinator until `stop` is set (or SIGTERM / Ctrl-C): SuperLink + runtime."""
    rt.check_flower_version()
    rt.quiet_flower()
    from fedsynth.crypto.keyfiles import KeyFileError

    try:
        cons, ca_pem, ca, cert, key = _files(keys_dir)
    except KeyFileError as exc:
        raise CoordinatorError(str(exc)) from None
    state = Path(state_dir or Path(keys_dir) / "coordinator" / "state").resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    _consortium["consortium"] = cons
    _outputs["root"] = Path(outputs or Path(keys_dir) / "coordinator" / "outputs").resolve()
    _outputs["root"].mkdir(parents=True, exist_ok=True)
    _, pin = rt.fedsynth_fab()
    stop = stop or threading.Event()
    address = f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "") else f"{host}:{port}"
    with scratch.folder("fedsynth-coordinator-") as tmp:
        secret = rt.write_secret_file(tmp)
        env = {**os.environ, "FLWR_HOME": str(state / "flwr-home"),
               "FLWR_TELEMETRY_ENABLED": "0"}
        cmd = [_bin("flower-superlink"), "--port", str(port), "--host", host,
               "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert),
               "--ssl-keyfile", str(key), "--enable-supernode-auth",
               "--isolation", "process", "--superexec-auth-secret-file", str(secret),
               "--disable-runtime-dependency-installation",
               "--database", str(state / "superlink.db")]
        logfile = (state / "superlink.log").open("ab")
        proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            control = _wait_control(address, ca_pem, proc, state / "superlink.log")
            try:
                for name, line in cons.node_keys.items():
                    new = rt.register_node(control, name, line)
                    log.info("party %s: node key %s", name,
                             "registered" if new else "already registered")
                for run_id in rt.stop_orphaned_runs(control):
                    log.warning("run %d was under way when the coordinator last stopped: "
                                "marked stopped, nothing was written for it; submit the job "
                                "again (its parties' ledgers keep what they released, and a "
                                "re-run is charged again)", run_id)
            finally:
                control.close()
            log.info("coordinator listening on %s:%d (Fleet, Control and Runtime API; TLS); "
                     "fedsynth %s, app bundle sha256 %s; state in %s", host, port,
                     rt.fedsynth_version(), pin, state)
            if ready is not None:
                ready.set()
            ep = rt.Endpoint(address, ca_pem, secret.read_bytes())
            defaults = dict.fromkeys(rt.RUN_CONFIG_KEYS, "")
            _on_sigterm(stop)
            runtime = threading.Thread(target=rt.serve, daemon=True, args=(
                ep, TaskType.SERVER_APP, rt.server_task(ep, server_app, {pin}, defaults), stop))
            runtime.start()
            while not stop.wait(0.5):
                if proc.poll() is not None:
                    raise CoordinatorError(f"flower-superlink exited with {proc.returncode}; "
                                           f"see {state / 'superlink.log'}")
            runtime.join(timeout=5)
        finally:
            stop.set()
            _terminate(proc)
            logfile.close()


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def _on_sigterm(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())


def _wait_control(address: str, ca_pem: bytes, proc: subprocess.Popen[bytes],
                  logpath: Path, wait: float = 60.0) -> Any:
    from flwr.proto.control_pb2 import ListNodesRequest

    deadline = time.monotonic() + wait
    while True:
        if proc.poll() is not None:
            tail = logpath.read_text(errors="replace").strip().splitlines()[-3:]
            raise CoordinatorError(f"flower-superlink exited with {proc.returncode}: "
                                   f"{' | '.join(tail)} (is the port taken?)")
        control = rt.control_client(address, ca_pem)
        try:
            control.ListNodes(ListNodesRequest())
            return control
        except Exception:
            control.close()
            if time.monotonic() > deadline:
                raise CoordinatorError(f"the SuperLink did not answer on {address} within "
                                       f"{wait:.0f} s; see {logpath}") from None
            time.sleep(0.2)


def _terminate(proc: subprocess.Popen[bytes], wait: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def submit_job(job_path: Path, coordinator: str, keys_dir: Path, out: Path, *,
               progress: Any = None, timeout: float = 24 * 3600.0,
               poll: float = 0.5, reconnect: float = 300.0,
               output_format: str | None = None) -> tuple[int, str, str]:
    """Submit the job file to a running coordinator (`fedsynth run`) and wait for its end.

    Checks the job against the local consortium.toml first (JobFileError), then submits the
    fedsynth app bundle with the job's text, its schema and `out` (a relative name: the
    coordinator makes it inside its outputs folder) over TLS, and polls the run, waiting up to
    `reconnect` seconds for a coordinator that stops answering. Returns (run id, sub-status,
    details): sub-status "completed", "failed", "stopped", "timeout" or "lost".
    `output_format` ("csv", "parquet") sets the job's `format` when the file leaves it out."""
    from fedsynth.coordinator.job_file import load_job

    say = progress or (lambda m: log.info("%s", m))
    keys_dir = Path(keys_dir)
    ca = keys_dir / CA_CERT
    if not ca.is_file():
        raise CoordinatorError(f"--keys {keys_dir}: missing {CA_CERT}, the certificate the "
                               "coordinator is checked against")
    cons = Consortium.load(keys_dir / CONSORTIUM)
    job = load_job(job_path, cons)
    job_text = Path(job_path).read_text(encoding="utf-8")
    if output_format is not None and output_format != job.output_format:
        if "format" in tomllib.loads(job_text):
            raise ValueError(f"--format {output_format}: the job file says format = "
                             f"{job.output_format!r}; give one or the other")
        table_file.file_name("synthetic", output_format)  # ValueError for an unknown one
        job_text = f"format = {output_format!r}\n" + job_text  # a top-level key, first
    config = {"job-toml": job_text,
              "schema-json": job.spec.schema.to_json(), "out": output_name(str(out))}
    control = rt.control_client(coordinator, ca.read_bytes())
    try:
        try:
            run_id = rt.submit_run(control, config)
        except Exception as exc:
            raise CoordinatorError(f"cannot submit to the coordinator at {coordinator}: "
                                   f"{exc} (is `fedsynth coordinator start` running there, "
                                   "and is --keys the consortium's folder?)") from None
        say(f"submitted run {run_id} to {coordinator}: parties "
            f"{', '.join(job.spec.party_names)}, ε={job.spec.epsilon:g}")
        t0, last, lost = time.monotonic(), "", None
        while True:
            try:
                status, sub, details = rt.run_status(control, run_id)
            except Exception as exc:  # the coordinator is gone (crashed, restarting, network)
                now = time.monotonic()
                if lost is None:
                    lost = now
                    say(f"lost contact with the coordinator at {coordinator} ({exc}); waiting "
                        f"up to {reconnect:.0f} s for it to come back")
                elif now - lost > reconnect:
                    return run_id, "lost", (
                        f"no contact with the coordinator at {coordinator} for "
                        f"{reconnect:.0f} s; the run's outcome is unknown (its operator can "
                        "tell; a run the coordinator was running when it stopped is marked "
                        "stopped when it starts again)")
                control.close()
                time.sleep(2.0)
                control = rt.control_client(coordinator, ca.read_bytes())
                continue
            if lost is not None:
                say(f"the coordinator at {coordinator} answers again")
                lost = None
            if status != last:
                say(f"run {run_id}: {status}" + (f" ({time.monotonic() - t0:.0f} s)"
                                                 if last else ""))
                last = status
            if status == "finished":
                return run_id, sub, details
            if time.monotonic() - t0 > timeout:
                return run_id, "timeout", f"no end within {timeout:.0f} s (still {status})"
            time.sleep(poll)
    finally:
        control.close()
