"""The `fedsynth` command: a thin face over the library; each subcommand parses and delegates."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_USAGE, EXIT_INPUT, EXIT_JOB = 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsynth", description=(
        "Federated differentially private synthetic data: parties keep their rows, the "
        "consortium gets one synthetic table."))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="run a local multi-party job on a bundled dataset or file")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path, help="pooled table to split into parties (CSV/Parquet)")
    src.add_argument("--dataset", help="bundled dataset (default ISLR/Default; see --list)")
    s.add_argument("--list", action="store_true", help="list the bundled datasets and exit")
    s.add_argument("--schema", type=Path, help="public schema JSON (default: drafted from data)")
    s.add_argument("--target", help="target column for the ML-efficacy metrics")
    s.add_argument("--sensitive", help="sensitive attribute for the bias measures of the report")
    s.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                   help="skip the federated evaluation (no report.html)")
    s.add_argument("--evaluation-epsilon", type=float, default=1.0,
                   help="ε of the DP evaluation, per party's held-out rows, charged to a "
                   "separate evaluation budget (default 1)")
    s.add_argument("--exact-evaluation", action="store_true",
                   help="evaluate with exact sums (NOT differentially private; each party's "
                   "policy must allow it)")
    s.add_argument("--parties", type=int, default=5, help="number of parties (default 5)")
    s.add_argument("--partition", default="iid", help="iid | dirichlet:ALPHA | column:NAME")
    s.add_argument("--epsilon", type=float, nargs="+", default=[1.0],
                   help="total ε (default 1); several values run one job each and add a "
                   "privacy-utility curve to the report")
    s.add_argument("--delta", type=float, default=1e-6, help="δ (default 1e-6)")
    s.add_argument("--channel", default="secagg", choices=["secagg", "plain"],
                   help="secagg (default) or plain (unprotected; simulation only)")
    s.add_argument("--threshold", type=int, help="t: fewest surviving parties (default 80%%)")
    s.add_argument("--colluders", type=int, default=0, help="c: parties that may collude with "
                   "the coordinator (default 0)")
    s.add_argument("--rows", type=int, help="synthetic rows (default: about the real count)")
    s.add_argument("--holdout", type=float, default=0.2,
                   help="fraction held out before partitioning, for evaluation only (0.2)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the partition, holdout and synthetic sampling (default 0); "
                   "never of the DP noise, which always comes from the OS")
    s.add_argument("--engine", default="flower", choices=["flower", "local"],
                   help="flower (default: Flower simulation engine) or local (in-process)")
    s.add_argument("--out", type=Path, default=Path("fedsynth-out"), help="output folder")

    e = sub.add_parser("evaluate", help="score synthetic tables against real rows; writes "
                       "report.html and metrics.json")
    e.add_argument("--real", type=Path, required=True,
                   help="real rows the synthesizer did not see (held out), CSV/Parquet")
    e.add_argument("--synthetic", type=Path, required=True, nargs="+",
                   help="synthetic table(s); several (e.g. one per ε) add a privacy-utility "
                   "curve. A privacy.json beside a table is read for its ε")
    e.add_argument("--train", type=Path, help="the rows the synthesizer saw: enables the "
                   "membership-inference measure and is used to train the TRTR model")
    e.add_argument("--target", help="target column for ML efficacy (TSTR vs TRTR)")
    e.add_argument("--sensitive", help="sensitive attribute for the bias measures (needs "
                   "--target)")
    e.add_argument("--schema", type=Path, help="public schema JSON (default: schema.json beside "
                   "the first synthetic table, else drafted from the tables)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", type=Path, default=Path("fedsynth-evaluation"), help="output folder")

    sc = sub.add_parser("schema", help="schema tools")
    scs = sc.add_subparsers(dest="schema_command", required=True)
    inf = scs.add_parser("infer", help="draft a schema from a party's file, to review and share")
    inf.add_argument("file", type=Path)
    inf.add_argument("--out", type=Path, help="write here instead of standard output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("fedsynth").setLevel(logging.INFO)  # our progress, not libraries' chatter
    if args.command == "schema":
        return _schema_infer(args)
    if args.command == "evaluate":
        return _evaluate(args)
    return _simulate(args)


def _schema_infer(args: argparse.Namespace) -> int:
    from fedsynth.client_node.data import DataFileError, read_table
    from fedsynth.synthesis.schema import infer_schema

    try:
        text = infer_schema(read_table(args.file)).to_json()
    except DataFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}; review the bounds and categories before sharing it",
              file=sys.stderr)
    else:
        print(text)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from fedsynth.client_node.data import DataFileError, read_table
    from fedsynth.evaluation.local import Run, evaluate_runs
    from fedsynth.evaluation.output import write_folder
    from fedsynth.evaluation.plan import EvalOptions
    from fedsynth.synthesis.schema import DataValidationError, Schema, SchemaError

    log = logging.getLogger("fedsynth")
    try:
        schema_file = args.schema or args.synthetic[0].parent / "schema.json"
        schema = Schema.load(schema_file) if args.schema or schema_file.exists() else None
        if schema is not None:
            log.info("schema: %s", schema_file)
        runs = []
        for path in args.synthetic:
            privacy_file = path.parent / "privacy.json"
            privacy = json.loads(privacy_file.read_text()) if privacy_file.exists() else None
            runs.append(Run(read_table(path), str(path), privacy))
        doc, html = evaluate_runs(
            read_table(args.real), runs, train=read_table(args.train) if args.train else None,
            schema=schema, options=EvalOptions(target=args.target, sensitive=args.sensitive,
                                               seed=args.seed),
            progress=lambda m: log.info("%s", m))
    except (DataFileError, DataValidationError, SchemaError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    out = write_folder(args.out, {"metrics.json": json.dumps(doc, indent=2) + "\n",
                                  "report.html": html})
    _print_summary(doc)
    print(f"report: {out}/report.html")
    return 0


def _print_summary(m: dict[str, object]) -> None:
    """A few headline numbers of an evaluation on standard output; under a DP evaluation each
    carries its noise level, and a TVD no larger than its noise floor is said to be so."""
    tvd, priv = m["tvd"], m["privacy"]
    assert isinstance(tvd, dict) and isinstance(priv, dict)
    sd = m.get("uncertainty")
    sd = sd if isinstance(sd, dict) else {}
    floor = tvd.get("noise_floor") if isinstance(tvd.get("noise_floor"), dict) else {}

    def shown(value: object, key: str, digits: int = 3) -> str:
        if not isinstance(value, (int, float)):
            return "-"
        text = f"{value:.{digits}f}"
        if key in sd:
            text += f" ± {sd[key]:.{digits}f}"
        way = key.removeprefix("tvd.")
        if key.startswith("tvd.") and floor and floor.get(way) is not None \
                and floor[way] > 0.5 * value:
            text += f" (noise floor {floor[way]:.3f}: mostly noise at this ε and holdout size)"
        return text

    print(f"similarity: TVD 1-way {shown(tvd['1way'], 'tvd.1way')}, 2-way "
          f"{shown(tvd['2way'], 'tvd.2way')}, 3-way {shown(tvd['3way'], 'tvd.3way')}")
    ml = m.get("ml_efficacy")
    if isinstance(ml, dict) and ml.get("tstr_auc") is not None:
        print(f"ML efficacy ({ml['target']} = {ml['positive_class']}): TSTR AUC "
              f"{shown(ml['tstr_auc'], 'ml_efficacy.tstr_auc')} vs TRTR "
              f"{shown(ml.get('trtr_auc'), 'ml_efficacy.trtr_auc')}")
    ev = m.get("evaluation")
    rows = m.get("rows_real")
    if isinstance(ev, dict) and ev.get("dp") and isinstance(rows, (int, float)) and rows < 2000:
        print(f"note: about {rows:.0f} held-out rows; a DP evaluation needs about 2,000 at ε=1 "
              "(use --evaluation-epsilon 3, or a larger --holdout)")
    rate, key = priv.get("exact_match_rate"), "privacy.exact_match_rate"
    if rate is None:  # a DP evaluation: held-out rows that have a synthetic twin
        rate, key = priv.get("real_exact_match_rate"), "privacy.real_exact_match_rate"
    print(f"privacy: exact-match rate {shown(rate, key, 4)}, membership attack AUC "
          f"{shown(priv.get('membership_inference_auc'), 'privacy.membership_inference_auc')}")


def _simulate(args: argparse.Namespace) -> int:
    from fedsynth.simulations import datasets

    if args.list:
        for name, b in datasets.DATASETS.items():
            print(f"{name:24s} target={b.target:10s} {b.about}")
        return 0
    from fedsynth.client_node.data import DataFileError
    from fedsynth.coordinator.exchange import JobRefused
    from fedsynth.protocols.secure_sum import RoundFailed
    from fedsynth.protocols.spec import JobSpecError
    from fedsynth.simulations.run import simulate, simulate_sweep
    from fedsynth.synthesis.schema import DataValidationError, Schema, SchemaError

    kwargs = dict(data=args.data, dataset=args.dataset, target=args.target,
                  n_parties=args.parties, partition_spec=args.partition, delta=args.delta,
                  channel=args.channel, rows=args.rows, holdout=args.holdout, seed=args.seed,
                  threshold=args.threshold, colluders=args.colluders, engine=args.engine,
                  sensitive=args.sensitive, evaluate=args.evaluate,
                  evaluation_epsilon=None if args.exact_evaluation else args.evaluation_epsilon)
    try:
        kwargs["schema"] = Schema.load(args.schema) if args.schema else None
        if len(args.epsilon) > 1:
            _, curve = simulate_sweep(args.epsilon, out=args.out, **kwargs)
        else:
            res = simulate(epsilon=args.epsilon[0], out=args.out, **kwargs)
    except (DataFileError, DataValidationError, SchemaError, JobSpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (JobRefused, RoundFailed) as exc:
        print(f"error: the job stopped, nothing was written: {exc}", file=sys.stderr)
        return EXIT_JOB
    if len(args.epsilon) > 1:
        total = curve[0]["epsilon_total_over_sweep"] if curve else 0.0
        print(f"\nthe runs share the same rows: the sweep spent ε={total:.4f} in total")
        print(f"{'ε':>8} {'ε spent':>8} {'2-way TVD':>10} {'TSTR AUC':>9} {'attack AUC':>11}")
        for c in curve:
            cells = [c["tvd_2way"], c["tstr_auc"], c["membership_inference_auc"]]
            shown = ["-" if v is None else f"{v:.3f}" for v in cells]
            print(f"{c['epsilon']:>8g} {c['epsilon_spent']:>8.4f} {shown[0]:>10} {shown[1]:>9} "
                  f"{shown[2]:>11}")
        print(f"outputs: {args.out}/epsilon-*/; report with the curve: {args.out}/report.html")
        return 0
    m = res.metrics
    print(f"\nsynthetic table: {len(res.synthetic)} rows -> {res.out}/synthetic.csv")
    print(f"privacy: ε={res.privacy['epsilon_spent']:.4f} of {args.epsilon[0]}, δ={args.delta}, "
          f"t={res.privacy['threshold_t']}, c={res.privacy['colluders_c']}")
    if not res.privacy.get("differentially_private", True):
        print(f"WARNING: {res.privacy['warning']}")
    if "tvd" in m:
        ev = m.get("evaluation", {})
        kind = (f"DP at ε={ev.get('epsilon')} per party" if ev.get("dp")
                else "exact sums, NOT differentially private")
        print(f"federated evaluation against the parties' held-out rows ({kind}):")
        _print_summary(m)
        print(f"report: {res.out}/report.html")
    elif "evaluation_error" in m:
        print(f"the evaluation did not finish: {m['evaluation_error']}")
    print(f"time: {m['timings_seconds']['simulation_total']:.1f} s; log: {res.out}/job.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
