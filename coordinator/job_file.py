"""The analyst's job file (TOML) for a deployed consortium: what to run, among whom.

    schema = "schema.json"            # the public schema every party pinned (by its hash)
    parties = ["bank_a", "bank_b", "bank_c"]   # names in consortium.toml; all must take part
    epsilon = 1.0
    delta = 1e-6
    channel = "secagg"                # or "he" (homomorphic encryption, with a key holder)
    key_holder = "kh"                 # he: the key holder (consortium.toml) to use
    threshold = 2                     # optional: fewest survivors (default: 80%, secure min)
    colluders = 0
    graph = "complete"                # secagg: "complete" (default), "sparse" (SecAgg+) or "auto"
    rows = 10000                      # optional: synthetic rows (default: about the real count)
    seed = 0                          # sampling of synthetic rows only; never the DP noise
    target = "default"                # optional: the evaluation's ML-efficacy target
    evaluate = false                  # federated DP evaluation on the parties' held-out rows
    evaluation_epsilon = 1.0
    method = "marginals"              # or "dpsgd" (needs the dpsgd extra)
    format = "csv"                    # or "parquet": synthetic.parquet instead of synthetic.csv
    [train]                           # dpsgd only, optional: the training plan's fields
    rounds = 100                      #   (synthesis.dpsgd.TrainPlan: model, hidden, ...)

The identity keys come from the coordinator's consortium.toml, never from the job file: the
spec names each party with the key the consortium agreed on, and each party checks that list
against its own copy. Every problem in the file is reported at once.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.coordinator.job import JobOptions
from fedsynth.crypto.keyfiles import Consortium
from fedsynth.errors import FileProblems
from fedsynth.evaluation.plan import EvalOptions
from fedsynth.protocols.spec import JobSpec, JobSpecError, default_threshold
from fedsynth.synthesis.schema import Schema, SchemaError
from fedsynth.synthesis.table_file import FORMATS

KNOWN = {"schema", "parties", "epsilon", "delta", "channel", "threshold", "colluders", "rows",
         "seed", "target", "sensitive", "evaluate", "evaluation_epsilon", "key_holder", "method",
         "train", "format", "graph"}


class JobFileError(FileProblems):
    """Every problem of a job file, listed at once."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("job file", path, problems)


@dataclass(frozen=True)
class Job:
    spec: JobSpec
    options: JobOptions
    source: Path
    key_holder: str | None = None  # the he channel's key holder, by its consortium name
    output_format: str = "csv"  # the synthetic table's file: synthetic.csv or .parquet


def load_job(path: Path, consortium: Consortium) -> Job:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobFileError(path, [f"cannot read it: {exc.strerror or exc}"]) from None

    def schema_of(name: str) -> Schema:
        sp = Path(name).expanduser()
        return Schema.load(sp if sp.is_absolute() else path.resolve().parent / sp)

    return _job(text, path, consortium, schema_of)


def job_from_text(text: str, schema_json: str, consortium: Consortium,
                  source: Path = Path("job.toml")) -> Job:
    """The job as `load_job` checks it, from the job file's text and the schema's JSON text
    (as a deployed coordinator receives them); identity keys come from `consortium`."""
    def schema_of(name: str) -> Schema:
        return Schema.from_json(schema_json)

    return _job(text, source, consortium, schema_of)


def _job(text: str, path: Path, consortium: Consortium,
         schema_of: Callable[[str], Schema]) -> Job:
    try:
        doc: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(path, [f"not valid TOML: {exc}"]) from None
    problems = [f"unknown key {k!r} (known: {', '.join(sorted(KNOWN))})"
                for k in doc if k not in KNOWN]
    schema = None
    if not isinstance(doc.get("schema"), str):
        problems.append("missing 'schema' (the public schema JSON file)")
    else:
        try:
            schema = schema_of(doc["schema"])
        except (SchemaError, OSError, ValueError) as exc:
            problems.append(f"'schema': {exc}")
    names = doc.get("parties")
    if not isinstance(names, list) or len(names) < 2 or \
            not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        problems.append("'parties' must list two or more distinct party names")
        names = []
    unknown = [n for n in names if n not in consortium.identities]
    if unknown:
        problems.append(f"parties {unknown} are not in consortium.toml (it lists "
                        f"{', '.join(consortium.identities)})")
    eps, delta = doc.get("epsilon"), doc.get("delta", 1e-6)
    if not _positive(eps):
        problems.append(f"'epsilon' must be a positive number, got {eps!r}")
    if not _positive(delta) or not delta < 1:
        problems.append(f"'delta' must lie strictly between 0 and 1, got {delta!r}")
    ints = {k: doc.get(k) for k in ("threshold", "colluders", "rows", "seed") if k in doc}
    problems += [f"{k!r} must be a whole number, got {v!r}" for k, v in ints.items()
                 if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    channel = str(doc.get("channel", "secagg"))
    holder = doc.get("key_holder")
    if channel == "he" and holder is None and len(consortium.key_holders) == 1:
        holder = next(iter(consortium.key_holders))  # the consortium's only key holder
    if channel == "he" and holder not in consortium.key_holders:
        problems.append(f"'key_holder' {holder!r}: a job over the he channel names one of the "
                        "key holders in consortium.toml (it lists "
                        f"{', '.join(consortium.key_holders) or 'none: add one with keys init'})")
    elif channel != "he" and holder is not None:
        problems.append(f"'key_holder' is set but 'channel' is {channel!r}: only the he channel "
                        "has a key holder")
    method = doc.get("method", "marginals")
    train = doc.get("train")
    if method not in ("marginals", "dpsgd"):
        problems.append(f"'method' must be \"marginals\" or \"dpsgd\", got {method!r}")
    elif method == "dpsgd":
        if not doc.get("rows") and isinstance(train, dict) and train.get("domain_share") == 0:
            problems.append("'rows' is needed with method = \"dpsgd\" and domain_share = 0 (it "
                            "then makes no noisy count of the parties' rows)")
        problems += _train_problems(train, eps, delta, schema)
    elif train is not None:
        problems.append("a [train] table is only for method = \"dpsgd\"")
    output_format = doc.get("format", "csv")
    if output_format not in FORMATS:
        problems.append(f"'format' must be one of {', '.join(map(repr, FORMATS))}, got "
                        f"{output_format!r}")
    if problems or schema is None:
        raise JobFileError(path, problems)
    colluders = int(doc.get("colluders", 0))
    evaluate = None
    if doc.get("evaluate", False):
        evaluate = EvalOptions(target=doc.get("target"), sensitive=doc.get("sensitive"),
                               seed=int(doc.get("seed", 0)),
                               epsilon=float(doc.get("evaluation_epsilon", 1.0)),
                               delta=float(delta))
    try:
        assert isinstance(eps, (int, float))
        spec = JobSpec(schema=schema, epsilon=float(eps), delta=float(delta),
                       parties=len(names),
                       threshold=int(doc.get("threshold", default_threshold(len(names),
                                                                            colluders))),
                       colluders=colluders, channel=channel,
                       method=str(method), graph=str(doc.get("graph", "complete")),
                       party_names=tuple(names),
                       identity_keys=tuple(consortium.identities[n] for n in names),
                       key_holder=consortium.key_holders.get(str(holder), b"")
                       if channel == "he" else b"")
        if evaluate is not None:
            evaluate.check(schema)
    except (JobSpecError, ValueError) as exc:
        raise JobFileError(path, [str(exc)]) from None
    rows = doc.get("rows")
    options = JobOptions(rows=int(rows) if rows else None, seed=int(doc.get("seed", 0)),
                         evaluate=evaluate, train=dict(train) if train else None)
    return Job(spec, options, path, holder if channel == "he" else None, str(output_format))


def _train_problems(train: object, eps: object, delta: object, schema: Schema | None
                    ) -> list[str]:
    """What is wrong with a dpsgd job's [train] table (checked by the plan itself), and
    whether its noise can meet the job's ε at all on the schema (`TrainPlan.check`: the
    domain round and, for distributed noise, the step's grid at the largest generator the
    schema allows), as the coordinator checks it again before any release."""
    if train is not None and not isinstance(train, dict):
        return ["'train' must be a table ([train]) of training plan fields"]
    try:
        from fedsynth.synthesis import dpsgd
    except ImportError:
        return ['method = "dpsgd" needs the dpsgd extra on the coordinator: '
                'pip install -e ".[dpsgd]"']
    try:
        plan = dpsgd.TrainPlan.from_options(eps, delta, train)  # type: ignore[arg-type]
        if schema is not None:
            plan.check(schema)
    except (TypeError, ValueError) as exc:
        return [f"[train]: {exc}"]
    return []


def _positive(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
