"""simulate(): a whole federated job on one machine, from a pooled table to the output folder.

Simulation conveniences, documented: the public schema is drafted from the pooled table (in
a real federation the parties agree on it from public knowledge; a drafted schema holds exact
facts of the data and is marked so in schema.json and privacy.json), and a holdout is cut
before partitioning and used only for evaluation. Each party gets its own folder with its
table, its held-out rows, its privacy ledger and an identity key; its policy pins the schema
and lists the consortium. The parties run as Flower ClientApps in Flower's simulation engine
(or, with engine="local", as the same Node code called in-process); under the he channel the
key holder is one more node (a SuperNode of its own, or an in-process object). `--seed`
controls the partition, the holdout and the sampling of synthetic rows, never the DP noise,
which every party draws from its operating system's entropy.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsynth import progress, scratch
from fedsynth.client_node.data import read_table
from fedsynth.client_node.keyholder import KeyHolderNode, KeyHolderPolicy
from fedsynth.client_node.node import Node, NodePolicy
from fedsynth.coordinator.job import JobOptions, JobResult, run_job
from fedsynth.evaluation.metrics import marginal_tvd
from fedsynth.evaluation.output import Content, check_out, write_folder
from fedsynth.evaluation.plan import EvalOptions
from fedsynth.evaluation.report import render_or_none
from fedsynth.protocols import channels
from fedsynth.protocols.spec import JobSpec
from fedsynth.protocols.transport import Transport
from fedsynth.simulations import datasets, partition
from fedsynth.simulations.local import LocalTransport
from fedsynth.simulations.parties import (
    job_spec,
    key_holder_identity,
    key_holder_policy,
    make_identities,
    write_parties,
)
from fedsynth.synthesis import datetimes, table_file
from fedsynth.synthesis.conditions import (
    ClassRatio,
    Conditions,
    parse_class_ratio,
    parse_conditions,
)
from fedsynth.synthesis.encoding import Encoding, Grouping
from fedsynth.synthesis.model import SavedModel
from fedsynth.synthesis.schema import Schema, draft_schema_with_notes, validate_frame

log = logging.getLogger("fedsynth")
REVIEW_LOG = "fedsynth.review"  # notes on a drafted schema; they quote the data
HELDOUT_FILE = "real-heldout.csv"  # the held-out real rows, for `fedsynth evaluate`
MAX_PARTIES = 1000  # NodePolicy's default max_parties
DEFAULT_EVALUATION_EPSILON = 1.0  # DP evaluation: each party's held-out rows, its own budget
DRAFTED = ("drafted from the pooled data (simulation convenience, not private): its categories "
           "and bounds are exact facts of the data; a real consortium fixes them from public "
           "knowledge")


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
    heldout: pd.DataFrame | None = None  # the real rows held out for evaluation
    model: SavedModel | None = None  # the fitted model: more rows later, at no privacy cost
    output_format: str = "csv"  # synthetic.csv, or synthetic.parquet


def _pooled(parties: Sequence[pd.DataFrame] | None, data: str | Path | None,
            dataset: str | None, target: str | None, schema: Schema | None
            ) -> tuple[pd.DataFrame, str | None, str]:
    given = sum(x is not None for x in (parties, data, dataset))
    if given > 1:
        raise ValueError("give only one of parties=, data= (--data) or dataset= (--dataset)")
    if parties is not None:
        return pd.concat(list(parties), ignore_index=True), target, "given parties"
    if data is not None:
        return read_table(data, schema), target, str(data)
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
             sensitive: str | None = None,
             evaluation_epsilon: float | None = DEFAULT_EVALUATION_EPSILON,
             overwrite: bool = False, conditions: Conditions | None = None,
             class_ratio: ClassRatio | None = None, method: str = "marginals",
             output_format: str = "csv", graph: str = "complete",
             _shared: dict[str, Any] | None = None) -> SimulationResult:
    """Run one federated synthesis job locally and return the synthetic table and reports.

    `parties` (one DataFrame per party) or `data`/`dataset` (a pooled table, split into
    `n_parties` by `partition_spec`). Either way a `holdout` fraction of the rows (default
    20%, drawn at random from each party's table, or from the pooled table before it is split)
    is held out: never used for synthesis, only to evaluate. With `evaluate`, the parties score
    the synthetic table against their held-out rows in a federated evaluation (`target`,
    `sensitive` as in `fedsynth evaluate`), DP at `evaluation_epsilon` per party (None: exact
    sums, not DP).

    `conditions` and `class_ratio` (as in `SynthesisModel.sample`) draw the synthetic table
    from the fitted model's conditional distribution, or with one column's values re-weighted
    (post-processing: the privacy is unchanged); the evaluation, when asked, scores the model's
    plain sample, and metrics.json says so.

    `graph` is the secagg channel's ("complete", the default; "sparse" or "auto" for SecAgg+
    on many parties: protocols.spec).

    With `out`, writes synthetic.csv (synthetic.parquet with `output_format="parquet"`: the
    same columns, with their types kept), privacy.json, metrics.json, report.html, schema.json,
    model.json and model.npz (the fitted model, for `fedsynth sample`), job.log and
    real-heldout.csv (the held-out real rows, for `fedsynth evaluate`; real data: keep it
    private) into a new folder, all or nothing. An existing non-empty folder is
    refused before any work unless `overwrite` and fedsynth wrote it. Progress of long steps
    is shown on standard error (`fedsynth.progress.show("off")` silences it).
    """
    lines: list[str] = []
    handler = _ListHandler(lines)
    handler.addFilter(_NotPartyLog())
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
                         engine, evaluate, options, progress, lines, sensitive,
                         evaluation_epsilon, overwrite, conditions, class_ratio, _shared,
                         method, output_format, graph)
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


class _NotPartyLog(logging.Filter):
    """The parties' (and the key holder's) own log lines stay out of the job's job.log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(("fedsynth.node", "fedsynth.keyholder", REVIEW_LOG))


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
              sensitive: str | None, evaluation_epsilon: float | None, overwrite: bool,
              conditions: Conditions | None, class_ratio: ClassRatio | None,
              shared: dict[str, Any] | None, method: str = "marginals",
              output_format: str = "csv", graph: str = "complete") -> SimulationResult:
    def say(msg: str) -> None:
        if progress is None:
            log.info("%s", msg)  # the job.log handler records it
        else:
            progress(msg)
            lines.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}")

    t0 = time.perf_counter()
    table_file.file_name("synthetic", output_format)  # an unknown format fails before any work
    if out is not None and shared is None:  # a sweep checks its folder itself
        check_out(Path(out), overwrite=overwrite)
    _check_arguments(engine, holdout, rows, n_parties if parties is None else len(parties),
                     channel)
    pooled, target, source = _pooled(parties, data, dataset, target, schema)
    if target is not None and target not in pooled.columns:
        raise ValueError(f"target column {target!r} is not in {source} (columns: "
                         f"{', '.join(map(str, pooled.columns))})")
    drafted = schema is None
    if schema is None:
        schema, notes = draft_schema_with_notes(pooled)
        for note in notes:  # they quote the data: the user's terminal, not job.log
            logging.getLogger(REVIEW_LOG).warning("schema draft: %s", note)
    if drafted:
        schema = Schema(schema.columns, meta={**schema.meta, "provenance": DRAFTED})
    # a party's site may be a column the job does not read (an id the draft left out): the
    # simulation still splits by it, and it goes no further
    kind, by = partition.parse(partition_spec) if parties is None else ("", None)
    site = (pooled[by].reset_index(drop=True) if kind == "column" and by in pooled.columns
            and by not in schema.names else None)
    pooled = validate_frame(pooled, schema, source=source)
    _check_sampling(schema, conditions, class_ratio)  # a typo fails before any budget is spent
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
        if site is None:
            tables = partition.split(train, n_parties, partition_spec, target=target,
                                     seed=seed)
        else:
            with_site = train.assign(**{str(by): site[~is_hold].reset_index(drop=True)})
            tables = [t.drop(columns=[str(by)]) for t in partition.split(
                with_site, n_parties, partition_spec, target=target, seed=seed)]
    _check_every_party_has_rows(tables, len(pooled), holdout, partition_spec)
    n = len(tables)
    if evaluate and len(hold) == 0:
        log.warning("no rows held out (holdout 0): the evaluation is skipped, since it uses "
                    "held-out rows only (never the rows the synthesizer saw)")
        evaluate = False
    shared = shared if shared is not None else {}
    identities = shared.setdefault("identities", make_identities(n))
    holder = shared.setdefault("key_holder", key_holder_identity())
    spec = job_spec(schema, identities, epsilon=epsilon, delta=delta, threshold=threshold,
                    colluders=colluders, channel=channel, method=method, key_holder=holder,
                    graph=graph)
    # No party's exact row count goes into the job's log or outputs: only the pooled table's
    # shape, which the simulation's user gave.
    say(f"{source}: {len(schema.columns)} columns, {n} parties; ε={epsilon}, δ={delta}")
    if not channels.get(channel).protected:
        log.warning("channel %s: the coordinator sees each party's noisy counts in the "
                    "clear (no secure aggregation); for simulations only", channel)

    opts = options or JobOptions(rows=rows, seed=seed)
    if rows is not None and opts.rows != rows:
        raise ValueError("give rows either directly or in options, not both")
    if method == "dpsgd" and opts.rows is None:  # no DP count of its own: the pooled table's
        opts = replace(opts, rows=len(train))  # training rows, which the simulation's user holds
    if evaluate and opts.evaluate is None:
        opts = replace(opts, evaluate=EvalOptions(target=target, sensitive=sensitive, seed=seed,
                                                  epsilon=evaluation_epsilon, delta=delta))
    if opts.evaluate is not None:
        opts.evaluate.check(schema)  # a typo in a column name fails before any budget is spent
    ev = opts.evaluate
    ev_eps = None if ev is None else ev.epsilon
    with scratch.folder("fedsynth-parties-") as tmp:
        work = Path(shared.setdefault("work", tmp))
        if "policies" not in shared:
            evaluations = int(shared.get("evaluations", 1))
            shared["policies"] = write_parties(
                work, tables, spec, identities, _deal(hold, n, seed),
                epsilon_cap=shared.get("epsilon_cap", epsilon),
                evaluation="off" if ev is None else ("exact" if ev_eps is None else "dp"),
                evaluation_epsilon_cap=0.0 if ev_eps is None else ev_eps * evaluations,
                evaluations=evaluations)
        policies: dict[int, NodePolicy] = shared["policies"]
        # the parties read their own files from here on: the pooled copies go (10M rows:
        # about 1 GB), the training rows stay only for the evaluation's anchor measure
        tables, pooled = [], pooled.iloc[:0]
        if ev is None:
            train = train.iloc[:0]
        result = _run(engine, policies, spec, opts, say,
                      key_holder_policy(holder) if spec.key_holder else None)
        ledgers = {str(p): pol.ledger() for p, pol in policies.items()}
        spent = {p: led.spent() for p, led in ledgers.items()}
        if result.evaluation is not None and ev_eps is not None:
            result.evaluation.setdefault("evaluation", {})["epsilon_spent_per_party_ledger"] = {
                p: led.spent("evaluation") for p, led in ledgers.items()}
        torn = {p: led.torn() for p, led in ledgers.items() if led.torn()}
    result.privacy["epsilon_spent_per_party_ledger"] = spent
    if torn:
        result.privacy["ledger_torn_entries"] = torn
    if drafted:
        result.privacy["schema"] = DRAFTED
    metrics: dict[str, Any] = dict(result.evaluation or {})
    if result.evaluation_error:
        metrics["evaluation_error"] = result.evaluation_error
    if result.evaluation is not None and train.shape[1] >= 2:
        # the anchors' measure (DESIGN.md): needs the pooled train rows, which only a
        # simulation holds; not part of what a federation can compute
        metrics["tvd_2way_vs_train"] = marginal_tvd(train, result.synthetic, way=2)
    metrics["job"] = _settings(result.privacy, partition_spec if parties is None else
                               "given tables", holdout, n, epsilon, delta, len(hold))
    metrics["steps"] = result.steps
    metrics["timings_seconds"] = {**result.timings, "simulation_total": time.perf_counter() - t0}
    metrics["bytes_sent_per_party"] = {str(k): v for k, v in result.bytes_from_party.items()}
    if result.bytes_from_key_holder:
        metrics["bytes_sent_by_key_holder"] = result.bytes_from_key_holder
    report = None
    if result.evaluation is not None:
        report = render_or_none(metrics, privacy=result.privacy,
                                title=f"fedsynth: {source}, {n} parties, ε={epsilon}")
    synthetic = result.synthetic
    if conditions or class_ratio:
        if result.model is None:
            raise ValueError(f"method {method!r} keeps no model to draw conditioned or "
                             "re-weighted rows from; use --method marginals for --condition "
                             "and --class-ratio")
        synthetic = result.model.sample(len(result.synthetic), seed=seed, conditions=conditions,
                                        class_ratio=class_ratio)
        metrics["sampling"] = {
            "conditions": _listed(conditions), "class_ratio": _listed(class_ratio),
            "note": "synthetic.csv was drawn from the fitted model under these conditions and "
                    "class ratio (post-processing, no privacy cost); the evaluation measures "
                    "scored the model's plain sample"}
        say(f"drew {len(synthetic)} rows under the conditions and class ratio")
    res = SimulationResult(synthetic, result.privacy, metrics, schema,
                           timings=result.timings, report=report, log=lines, heldout=hold,
                           model=result.model, output_format=output_format)
    if out is not None:
        t_write = time.perf_counter()
        res.out = write_folder(Path(out), output_files(res), overwrite=overwrite)
        res.timings["write"] = time.perf_counter() - t_write
        say(f"wrote {res.out}")
    return res


def simulate_sweep(epsilons: Sequence[float], *, out: str | Path | None = None,
                   **kwargs: Any) -> tuple[list[SimulationResult], list[dict[str, Any]]]:
    """The same job at several ε: one output folder per ε (`epsilon-<ε>/`) and, at the top,
    report.html with the privacy-utility curve and privacy_utility.json; all or nothing.

    The runs use the same parties, rows and ledgers, so the parties' ledgers compose the whole
    sweep: its total ε (reported) is what the rows have spent, not any single run's ε."""
    if len(set(epsilons)) != len(epsilons) or not epsilons:
        raise ValueError(f"give distinct ε values, got {list(epsilons)}")
    overwrite = bool(kwargs.pop("overwrite", False))
    if out is not None:
        check_out(Path(out), overwrite=overwrite)
    with scratch.folder("fedsynth-sweep-") as work:
        shared: dict[str, Any] = {"work": str(work), "epsilon_cap": float(sum(epsilons)),
                                  "evaluations": len(epsilons)}
        results = []
        for i, e in enumerate(epsilons):
            log.info("run %d of %d: ε=%g", i + 1, len(epsilons), e)
            results.append(simulate(epsilon=e, _shared=shared, **kwargs))
    total = max(results[-1].privacy["epsilon_spent_per_party_ledger"].values())
    for r in results:
        r.privacy["epsilon_total_over_sweep"] = total
    curve = [{"epsilon": e, "epsilon_spent": r.privacy["epsilon_spent"],
              "epsilon_total_over_sweep": total,
              "tvd_2way": r.metrics.get("tvd", {}).get("2way"),
              "tstr_auc": r.metrics.get("ml_efficacy", {}).get("tstr_auc"),
              "membership_inference_auc": r.metrics.get("privacy", {}).get(
                  "membership_inference_auc"),
              "source": f"epsilon-{e:g}"} for e, r in zip(epsilons, results, strict=True)]
    if out is not None:
        files: dict[str, Content] = {}
        for e, r in zip(epsilons, results, strict=True):
            own = output_files(r)
            heldout = own.pop(HELDOUT_FILE, None)  # the same rows in every run: written once
            if heldout is not None:
                files[HELDOUT_FILE] = heldout
            files.update({f"epsilon-{e:g}/{k}": v for k, v in own.items()})
        files["privacy_utility.json"] = json.dumps(
            {"epsilon_total_over_sweep": total, "delta": kwargs.get("delta", 1e-6),
             "note": "the runs share the same rows: the sweep as a whole spent "
                     "epsilon_total_over_sweep (composed in each party's ledger)",
             "runs": curve}, indent=2) + "\n"
        last = results[-1]
        if last.report is not None and all(c["tvd_2way"] is not None for c in curve):
            page = render_or_none(last.metrics, privacy=last.privacy, runs=curve,
                                  title=f"fedsynth: ε sweep {list(epsilons)} (total "
                                        f"ε={total:.3g} over the sweep); details at "
                                        f"ε={epsilons[-1]:g}")
            if page is not None:
                files["report.html"] = page
        where = write_folder(Path(out), files, overwrite=overwrite)
        for e, r in zip(epsilons, results, strict=True):
            r.out = where / f"epsilon-{e:g}"
    return results, curve


def _check_sampling(schema: Schema, conditions: Conditions | None,
                    class_ratio: ClassRatio | None) -> None:
    """Conditions and class ratios that cannot hold under any model of this schema."""
    enc = Encoding.from_schema(schema)
    parse_conditions(enc, conditions)
    parse_class_ratio(enc, [Grouping.identity(c.size) for c in enc.codecs], class_ratio)


def _listed(given: Conditions | ClassRatio | None) -> list[str]:
    if not given:
        return []
    if isinstance(given, Mapping):
        return [f"{k}={_shown(v)}" for k, v in given.items()]
    return [str(x) for x in given]


def _shown(v: object) -> str:
    if isinstance(v, Mapping):  # a class ratio's value -> share
        return ",".join(f"{value}:{share}" for value, share in v.items())
    if isinstance(v, tuple):  # a range
        return "..".join("" if e is None else str(e) for e in v)
    return "" if v is None else str(v)


def _check_arguments(engine: str, holdout: float, rows: int | None, n: int,
                     channel: str) -> None:
    """Mistakes found before any data is read or any party started, each with its fix."""
    if engine not in ("flower", "local"):
        raise ValueError(f"engine {engine!r} is not one of flower, local")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, (int, np.integer))
                             or rows < 1):
        raise ValueError(f"rows must be a whole number of synthetic rows, at least 1 (got "
                         f"{rows!r}); leave it out for about as many rows as the real table")
    if n < 1:  # one party is allowed: it is the central and local-only baselines' setting
        raise ValueError(f"{n} parties: give at least 2 (one for a baseline)")
    if n > MAX_PARTIES:
        raise ValueError(f"{n} parties: at most {MAX_PARTIES} in one job (each party's "
                         "default policy)")
    if channel not in channels.CHANNELS:
        raise ValueError(f"channel {channel!r} is not one of {', '.join(channels.CHANNELS)}")


def _check_every_party_has_rows(tables: Sequence[pd.DataFrame], pooled: int, holdout: float,
                                spec: str) -> None:
    """Every party needs rows; found here, before any party is started."""
    empty = [i + 1 for i, t in enumerate(tables) if len(t) == 0]
    if not empty:
        return
    kept = sum(len(t) for t in tables)
    hint = (f"at most {kept} parties for this table" if spec == "iid" else
            "a larger dirichlet ALPHA or fewer parties" if spec.startswith("dirichlet") else
            "fewer parties")
    raise ValueError(f"{len(empty)} of {len(tables)} parties would get no rows ({pooled} rows, "
                     f"{kept} after the {holdout:.0%} holdout, split by {spec}): use {hint}")


def _settings(privacy: dict[str, Any], partition_spec: str, holdout: float, n: int,
              epsilon: float, delta: float, held: int) -> dict[str, Any]:
    """The job's settings, for the report: what ran and which rows the evaluation used."""
    return {"parties": n, "partition": partition_spec, "threshold_t": privacy["threshold_t"],
            "colluders_c": privacy["colluders_c"], "channel": privacy["channel"],
            "holdout_fraction": holdout, "marginals": privacy.get("marginals", []),
            "epsilon": epsilon, "delta": delta, "real_side": "held_out",
            "real_rows": (f"the parties' held-out rows ({holdout:.0%} of the rows, drawn at "
                          "random before synthesis and never used for it)") if held else
                         "none: no rows were held out, so nothing was evaluated"}


def _deal(hold: pd.DataFrame, n: int, seed: int) -> list[pd.DataFrame | None]:
    """The held-out rows dealt at random to the parties: each evaluates against its own."""
    if len(hold) == 0:
        return [None] * n
    owner = np.random.default_rng([seed, 99]).integers(0, n, len(hold))
    return [hold[owner == i].reset_index(drop=True) if (owner == i).any() else None
            for i in range(n)]


def _run(engine: str, policies: dict[int, NodePolicy], spec: JobSpec, opts: JobOptions,
         say: Callable[[str], None], key_holder: KeyHolderPolicy | None = None) -> JobResult:
    if engine == "local":
        transport: Transport = LocalTransport(
            {p: Node(pol) for p, pol in policies.items()},
            key_holder=None if key_holder is None else KeyHolderNode(key_holder))
        return run_job(transport, spec, opts, say)
    return run_flower(policies, spec, opts, say, key_holder)


def run_flower(policies: dict[int, NodePolicy], spec: JobSpec, opts: JobOptions,
               say: Callable[[str], None], key_holder: KeyHolderPolicy | None = None,
               ) -> JobResult:
    """The job in Flower's simulation engine: one ClientApp per party, the ServerApp in-process.
    With `key_holder` (he channel) one more SuperNode runs the ClientApp as the key holder."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.app import Context
    from flwr.simulation import run_simulation

    from fedsynth.client_node.app import make_client_app
    from fedsynth.coordinator.app import GridTransport, make_server_app

    by_partition: dict[int, NodePolicy | KeyHolderPolicy] = {
        p - 1: pol for p, pol in policies.items()}
    if key_holder is not None:  # the last SuperNode
        by_partition[len(policies)] = key_holder

    def policy_for(context: Context) -> NodePolicy | KeyHolderPolicy:
        return by_partition[int(context.node_config["partition-id"])]

    box: dict[str, Any] = {}

    engine_start = progress.start("starting the Flower engine")

    def job(transport: GridTransport) -> None:
        engine_start.close()
        try:
            box["result"] = run_job(transport, spec, opts, say)
        except BaseException as exc:  # carried out of Flower's server thread intact
            box["error"] = exc

    say("starting Flower simulation engine")
    _quiet_flower()
    try:
        run_simulation(server_app=make_server_app(
                           job, spec.party_names,
                           key_holder=None if key_holder is None else key_holder.name),
                       client_app=make_client_app(policy_for), num_supernodes=len(by_partition),
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": min(2, os.cpu_count() or 1),
                                                     "include_dashboard": False,
                                                     "log_to_driver": False}})
    finally:
        engine_start.close(failed=True)  # no-op when the job started
    if "error" in box:
        raise box["error"]
    if "result" not in box:
        raise RuntimeError("the Flower simulation ended without a result; see the log above")
    result: JobResult = box["result"]
    return result


def _quiet_flower() -> None:
    """Flower's and Ray's chatter off; and one warning that does not apply to us.

    Ray starts its processes (GCS server, raylet, agents) with subprocess.Popen and a
    `preexec_fn`, which makes Python run its at-fork hooks; once JAX has run (the estimation
    of an earlier job in this process: an ε sweep, a notebook) its hook warns that os.fork()
    in a multithreaded process may deadlock. That warning is for a child that goes on
    running Python. Here the child only blocks SIGINT and sets PR_SET_PDEATHSIG, then calls
    exec: no JAX state is used, Python re-initialises its own locks after fork, and glibc's
    malloc takes its arena locks across fork. So this message only, from this call site, is
    filtered; every other RuntimeWarning stays visible."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                            category=RuntimeWarning, module="subprocess")
    logging.getLogger("flwr").setLevel(logging.ERROR)


def output_files(res: SimulationResult) -> dict[str, Content]:
    """The files of a job's output folder, by name (the tables written when the folder is)."""
    files: dict[str, Content] = {
        table_file.file_name("synthetic", res.output_format): table_file.writer(
            res.synthetic, res.output_format),
        "privacy.json": json.dumps(res.privacy, indent=2, default=_json),
        "metrics.json": json.dumps(res.metrics, indent=2, default=_json),
        "schema.json": res.schema.to_json(),
        "job.log": "\n".join(res.log) + "\n",
    }
    if res.report is not None:
        files["report.html"] = res.report
    if res.heldout is not None and len(res.heldout):
        files[HELDOUT_FILE] = table_file.writer(
            datetimes.with_layout(res.heldout.copy(), res.schema.columns), "csv")
    if res.model is not None:
        files.update(res.model.files())
    return files


def _json(o: object) -> object:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
