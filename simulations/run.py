"""simulate(): a whole federated job on one machine, from a pooled table to the output folder.

Simulation conveniences, documented: the public schema is drafted from the pooled table (in
a real federation the parties agree on it from public knowledge), and a holdout is cut before
partitioning and used only for evaluation. Each party gets its own folder with its table and
its privacy ledger; the parties run as Flower ClientApps in Flower's simulation engine (or,
with engine="local", as the same Node code called in-process).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.client_node.data import read_table
from fedsynth.client_node.ledger import Ledger
from fedsynth.client_node.node import Node, NodePolicy
from fedsynth.coordinator.job import JobOptions, JobResult, run_job
from fedsynth.evaluation.metrics import marginal_tvd
from fedsynth.evaluation.output import write_folder
from fedsynth.evaluation.plan import EvalOptions
from fedsynth.evaluation.report import render
from fedsynth.protocols.spec import JobSpec, default_threshold
from fedsynth.protocols.transport import Transport
from fedsynth.simulations import datasets, partition
from fedsynth.simulations.local import LocalTransport
from fedsynth.synthesis.schema import Schema, infer_schema, validate_frame

log = logging.getLogger("fedsynth")


@dataclass
class SimulationResult:
    synthetic: pd.DataFrame
    privacy: dict[str, Any]
    metrics: dict[str, Any]
    schema: Schema
    out: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    report: str | None = None  # report.html, when the job was evaluated
    log: list[str] = field(default_factory=list)  # job.log's lines


def _pooled(parties: Sequence[pd.DataFrame] | None, data: str | Path | None,
            dataset: str | None, target: str | None) -> tuple[pd.DataFrame, str | None, str]:
    given = sum(x is not None for x in (parties, data, dataset))
    if given > 1:
        raise ValueError("give only one of parties=, data= (--data) or dataset= (--dataset)")
    if parties is not None:
        return pd.concat(list(parties), ignore_index=True), target, "given parties"
    if data is not None:
        return read_table(data), target, str(data)
    df, b = datasets.load(dataset or datasets.DEFAULT_DATASET)
    return df, target or b.target, f"{b.package}/{b.item}"


def simulate(parties: Sequence[pd.DataFrame] | None = None, *, data: str | Path | None = None,
             dataset: str | None = None, target: str | None = None, n_parties: int = 5,
             partition_spec: str = "iid", epsilon: float = 1.0, delta: float = 1e-6,
             channel: str = "secagg", rows: int | None = None, holdout: float = 0.2,
             seed: int = 0, out: str | Path | None = None, threshold: int | None = None,
             colluders: int = 0, schema: Schema | None = None, engine: str = "flower",
             evaluate: bool = True, options: JobOptions | None = None,
             progress: Callable[[str], None] | None = None,
             sensitive: str | None = None) -> SimulationResult:
    """Run one federated synthesis job locally and return the synthetic table and reports.

    `parties` (one DataFrame per party, kept as given) or `data`/`dataset` (split into
    `n_parties` by `partition_spec`). With `evaluate`, the parties score the synthetic table
    against their held-out rows in a federated evaluation (`target`, `sensitive` as in
    `fedsynth evaluate`). Writes synthetic.csv, privacy.json, metrics.json, report.html,
    schema.json and job.log to `out` if given, atomically: all or nothing.
    """
    lines: list[str] = []
    handler = _ListHandler(lines)
    logger = logging.getLogger("fedsynth")
    old_level, old_propagate = logger.level, logger.propagate
    # job.log gets every INFO line; the caller's handlers still get only what they asked for.
    forward = _Forward(logger.getEffectiveLevel())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    logger.addHandler(forward)
    try:
        return _simulate(parties, data, dataset, target, n_parties, partition_spec, epsilon,
                         delta, channel, rows, holdout, seed, out, threshold, colluders, schema,
                         engine, evaluate, options, progress, lines, sensitive)
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(forward)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class _Forward(logging.Handler):
    """Passes records at or above the caller's level on to the root logger's handlers."""

    def emit(self, record: logging.LogRecord) -> None:
        for h in logging.getLogger().handlers:
            if record.levelno >= h.level:
                h.handle(record)


def _simulate(parties: Sequence[pd.DataFrame] | None, data: str | Path | None,
              dataset: str | None, target: str | None, n_parties: int, partition_spec: str,
              epsilon: float, delta: float, channel: str, rows: int | None, holdout: float,
              seed: int, out: str | Path | None, threshold: int | None, colluders: int,
              schema: Schema | None, engine: str, evaluate: bool, options: JobOptions | None,
              progress: Callable[[str], None] | None, lines: list[str],
              sensitive: str | None) -> SimulationResult:
    def say(msg: str) -> None:
        if progress is None:
            log.info("%s", msg)  # the job.log handler records it
        else:
            progress(msg)
            lines.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}")

    t0 = time.perf_counter()
    if engine not in ("flower", "local"):
        raise ValueError(f"engine {engine!r} is not one of flower, local")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    pooled, target, source = _pooled(parties, data, dataset, target)
    if target is not None and target not in pooled.columns:
        raise ValueError(f"target column {target!r} is not in {source} (columns: "
                         f"{', '.join(map(str, pooled.columns))})")
    schema = schema or infer_schema(pooled)
    pooled = validate_frame(pooled, schema, source=source)
    rng = np.random.default_rng(seed)
    if parties is not None:
        tables = [validate_frame(p, schema, source=f"party {i + 1}") for i, p in enumerate(parties)]
        hold = pd.DataFrame(columns=pooled.columns)
        if holdout > 0:
            cut = [rng.random(len(t)) < holdout for t in tables]
            hold = pd.concat([t[c] for t, c in zip(tables, cut, strict=True)], ignore_index=True)
            tables = [t[~c].reset_index(drop=True) for t, c in zip(tables, cut, strict=True)]
        train = pd.concat(tables, ignore_index=True)
    else:
        is_hold = rng.random(len(pooled)) < holdout
        hold, train = pooled[is_hold].reset_index(drop=True), pooled[~is_hold].reset_index(
            drop=True)
        tables = partition.split(train, n_parties, partition_spec, target=target, seed=seed)
    n = len(tables)
    spec = JobSpec(schema=schema, epsilon=epsilon, delta=delta, parties=n,
                   threshold=threshold if threshold is not None else default_threshold(n),
                   colluders=colluders, channel=channel)
    say(f"{source}: {len(pooled)} rows, {len(schema.columns)} columns; {len(hold)} held out; "
        f"{n} parties of {', '.join(str(len(t)) for t in tables)} rows; ε={epsilon}, δ={delta}")

    opts = options or JobOptions(rows=rows, seed=seed)
    if rows is not None and opts.rows != rows:
        raise ValueError("give rows either directly or in options, not both")
    if evaluate and opts.evaluate is None:
        opts = replace(opts, evaluate=EvalOptions(target=target, sensitive=sensitive, seed=seed))
    if opts.evaluate is not None:
        opts.evaluate.check(schema)  # a typo in a column name fails before any budget is spent
    with tempfile.TemporaryDirectory(prefix="fedsynth-parties-") as work:
        policies = _write_parties(Path(work), tables, spec, seed, _deal(hold, n, seed))
        result = _run(engine, policies, spec, opts, say)
        spent = {str(p): Ledger(pol.ledger_path, pol.epsilon_cap, pol.delta).spent()
                 for p, pol in policies.items()}
    result.privacy["epsilon_spent_per_party_ledger"] = spent
    metrics: dict[str, Any] = dict(result.evaluation or {})
    if result.evaluation_error:
        metrics["evaluation_error"] = result.evaluation_error
    if result.evaluation is not None and train.shape[1] >= 2:
        # the anchors' measure (DESIGN.md): needs the pooled train rows, which only a
        # simulation holds; not part of what a federation can compute
        metrics["tvd_2way_vs_train"] = marginal_tvd(train, result.synthetic, way=2)
    metrics["steps"] = result.steps
    metrics["timings_seconds"] = {**result.timings, "simulation_total": time.perf_counter() - t0}
    metrics["bytes_sent_per_party"] = {str(k): v for k, v in result.bytes_from_party.items()}
    report = None
    if result.evaluation is not None:
        report = render(metrics, privacy=result.privacy,
                        title=f"fedsynth: {source}, {n} parties, ε={epsilon}")
    res = SimulationResult(result.synthetic, result.privacy, metrics, schema,
                           timings=result.timings, report=report, log=lines)
    if out is not None:
        res.out = write_folder(Path(out), output_files(res))
        say(f"wrote {res.out}")
    return res


def simulate_sweep(epsilons: Sequence[float], *, out: str | Path | None = None,
                   **kwargs: Any) -> tuple[list[SimulationResult], list[dict[str, Any]]]:
    """The same job at several ε: one output folder per ε (`epsilon-<ε>/`) and, at the top,
    report.html with the privacy-utility curve and privacy_utility.json; all or nothing."""
    if len(set(epsilons)) != len(epsilons) or not epsilons:
        raise ValueError(f"give distinct ε values, got {list(epsilons)}")
    results = [simulate(epsilon=e, **kwargs) for e in epsilons]
    curve = [{"epsilon": e, "epsilon_spent": r.privacy["epsilon_spent"],
              "tvd_2way": r.metrics.get("tvd", {}).get("2way"),
              "tstr_auc": r.metrics.get("ml_efficacy", {}).get("tstr_auc"),
              "membership_inference_auc": r.metrics.get("privacy", {}).get(
                  "membership_inference_auc"),
              "source": f"epsilon-{e:g}"} for e, r in zip(epsilons, results, strict=True)]
    if out is not None:
        files: dict[str, str | bytes] = {}
        for e, r in zip(epsilons, results, strict=True):
            files.update({f"epsilon-{e:g}/{k}": v for k, v in output_files(r).items()})
        files["privacy_utility.json"] = json.dumps(curve, indent=2) + "\n"
        last = results[-1]
        if last.report is not None and all(c["tvd_2way"] is not None for c in curve):
            files["report.html"] = render(last.metrics, privacy=last.privacy, runs=curve,
                                          title=f"fedsynth: ε sweep {list(epsilons)}; details "
                                                f"at ε={epsilons[-1]:g}")
        where = write_folder(Path(out), files)
        for e, r in zip(epsilons, results, strict=True):
            r.out = where / f"epsilon-{e:g}"
    return results, curve


def _deal(hold: pd.DataFrame, n: int, seed: int) -> list[pd.DataFrame | None]:
    """The held-out rows dealt at random to the parties: each evaluates against its own."""
    if len(hold) == 0:
        return [None] * n
    owner = np.random.default_rng([seed, 99]).integers(0, n, len(hold))
    return [hold[owner == i].reset_index(drop=True) if (owner == i).any() else None
            for i in range(n)]


def _write_parties(work: Path, tables: Sequence[pd.DataFrame], spec: JobSpec, seed: int,
                   holdouts: Sequence[pd.DataFrame | None] | None = None) -> dict[int, NodePolicy]:
    policies = {}
    holds = holdouts if holdouts is not None else [None] * len(tables)
    for i, (t, h) in enumerate(zip(tables, holds, strict=True), start=1):
        home = work / f"party-{i}"
        home.mkdir()
        t.to_parquet(home / "data.parquet", index=False)
        if h is not None:
            h.to_parquet(home / "holdout.parquet", index=False)
        policies[i] = NodePolicy(data_path=home / "data.parquet", ledger_path=home / "ledger.jsonl",
                                 epsilon_cap=spec.epsilon, delta=spec.delta,
                                 allow_plain=spec.channel == "plain",
                                 noise_seed=seed * 1000 + i, allow_evaluation=True,
                                 holdout_path=None if h is None else home / "holdout.parquet")
    return policies


def _run(engine: str, policies: dict[int, NodePolicy], spec: JobSpec, opts: JobOptions,
         say: Callable[[str], None]) -> JobResult:
    if engine == "local":
        transport: Transport = LocalTransport({p: Node(pol) for p, pol in policies.items()})
        return run_job(transport, spec, opts, say)
    return run_flower(policies, spec, opts, say)


def run_flower(policies: dict[int, NodePolicy], spec: JobSpec, opts: JobOptions,
               say: Callable[[str], None]) -> JobResult:
    """The job in Flower's simulation engine: one ClientApp per party, the ServerApp in-process."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.app import Context
    from flwr.simulation import run_simulation

    from fedsynth.client_node.app import make_client_app
    from fedsynth.coordinator.app import GridTransport, make_server_app

    by_partition = {p - 1: pol for p, pol in policies.items()}

    def policy_for(context: Context) -> NodePolicy:
        return by_partition[int(context.node_config["partition-id"])]

    box: dict[str, Any] = {}

    def job(transport: GridTransport) -> None:
        try:
            box["result"] = run_job(transport, spec, opts, say)
        except BaseException as exc:  # carried out of Flower's server thread intact
            box["error"] = exc

    say("starting Flower simulation engine")
    _quiet_flower()
    run_simulation(server_app=make_server_app(job, len(policies)),
                   client_app=make_client_app(policy_for), num_supernodes=len(policies),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": min(2, os.cpu_count() or 1),
                                                 "include_dashboard": False,
                                                 "log_to_driver": False}})
    if "error" in box:
        raise box["error"]
    if "result" not in box:
        raise RuntimeError("the Flower simulation ended without a result; see the log above")
    result: JobResult = box["result"]
    return result


def _quiet_flower() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("flwr").setLevel(logging.ERROR)


def output_files(res: SimulationResult) -> dict[str, str | bytes]:
    """The files of a job's output folder, by name."""
    files: dict[str, str | bytes] = {
        "synthetic.csv": res.synthetic.to_csv(index=False),
        "privacy.json": json.dumps(res.privacy, indent=2, default=_json),
        "metrics.json": json.dumps(res.metrics, indent=2, default=_json),
        "schema.json": res.schema.to_json(),
        "job.log": "\n".join(res.log) + "\n",
    }
    if res.report is not None:
        files["report.html"] = res.report
    return files


def _json(o: object) -> object:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
