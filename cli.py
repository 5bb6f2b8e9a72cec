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
    s.add_argument("--parties", type=int, default=5, help="number of parties (default 5)")
    s.add_argument("--partition", default="iid", help="iid | dirichlet:ALPHA | column:NAME")
    s.add_argument("--epsilon", type=float, default=1.0, help="total ε (default 1)")
    s.add_argument("--delta", type=float, default=1e-6, help="δ (default 1e-6)")
    s.add_argument("--channel", default="secagg", choices=["secagg", "plain"],
                   help="secagg (default) or plain (unprotected; simulation only)")
    s.add_argument("--threshold", type=int, help="t: fewest surviving parties (default 80%%)")
    s.add_argument("--colluders", type=int, default=0, help="c: parties that may collude with "
                   "the coordinator (default 0)")
    s.add_argument("--rows", type=int, help="synthetic rows (default: about the real count)")
    s.add_argument("--holdout", type=float, default=0.2,
                   help="fraction held out before partitioning, for evaluation only (0.2)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--engine", default="flower", choices=["flower", "local"],
                   help="flower (default: Flower simulation engine) or local (in-process)")
    s.add_argument("--out", type=Path, default=Path("fedsynth-out"), help="output folder")

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
    from fedsynth.simulations.run import simulate
    from fedsynth.synthesis.schema import DataValidationError, Schema, SchemaError

    try:
        schema = Schema.load(args.schema) if args.schema else None
        res = simulate(data=args.data, dataset=args.dataset, target=args.target,
                       n_parties=args.parties, partition_spec=args.partition,
                       epsilon=args.epsilon, delta=args.delta, channel=args.channel,
                       rows=args.rows, holdout=args.holdout, seed=args.seed, out=args.out,
                       threshold=args.threshold, colluders=args.colluders, schema=schema,
                       engine=args.engine)
    except (DataFileError, DataValidationError, SchemaError, JobSpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (JobRefused, RoundFailed) as exc:
        print(f"error: the job stopped, nothing was written: {exc}", file=sys.stderr)
        return EXIT_JOB
    m = res.metrics
    print(f"\nsynthetic table: {len(res.synthetic)} rows -> {res.out}/synthetic.csv")
    print(f"privacy: ε={res.privacy['epsilon_spent']:.4f} of {args.epsilon}, δ={args.delta}, "
          f"t={res.privacy['threshold_t']}, c={res.privacy['colluders_c']}")
    print("fidelity vs holdout: TVD 1-way {:.3f}, 2-way {:.3f}, 3-way {:.3f}".format(
        m["tvd_1way"], m["tvd_2way"], m["tvd_3way"] or float("nan")))
    if m.get("tstr_auc") is not None:
        print(f"ML efficacy ({m.get('positive_class')}): TSTR AUC {m['tstr_auc']:.3f} vs TRTR "
              f"{m['trtr_auc']:.3f}")
    print(f"time: {m['timings_seconds']['simulation_total']:.1f} s; log: {res.out}/job.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
