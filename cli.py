"""The `fedsynth` command: a thin face over the library; each subcommand parses and delegates."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from fedsynth.errors import (  # noqa: F401 (re-exported for callers and tests)
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_JOB,
    EXIT_USAGE,
    FedsynthError,
)

if TYPE_CHECKING:
    import pandas as pd

EXIT_CODES = """exit codes:
  0    done
  2    usage: an unknown option or a value of the wrong type
  3    bad input: a file, column, value or output folder; the message says how to fix it
  4    the job stopped: a party refused it, or too few parties answered
  5    internal error: a bug; the message says where the full trace was written
  130  interrupted (Ctrl-C): everything stopped, nothing written"""

SIMULATE_EXAMPLES = """examples:
  fedsynth simulate                                  # ISLR/Default, 5 parties, ε=1
  fedsynth simulate --data bank.csv --target fraud --parties 3 --out runs/bank
  fedsynth simulate --dataset AER/CPS1988 --epsilon 0.5 1 3 --out runs/sweep
  fedsynth simulate --partition column:region --engine local
"""

EVALUATE_EXAMPLES = """examples:
  fedsynth evaluate --real fedsynth-out/real-heldout.csv \\
      --synthetic fedsynth-out/synthetic.csv --target default
  fedsynth evaluate --real holdout.csv --synthetic e0.5/synthetic.csv e1/synthetic.csv
"""


SAMPLE_EXAMPLES = """examples:
  fedsynth sample --model fedsynth-out --rows 50000 --out more.csv
  fedsynth sample --model fedsynth-out --rows 1000 --condition student=Yes \\
      --condition balance=1000..1500 --out students.csv
  fedsynth sample --model fedsynth-out --rows 10000 --class-ratio default=Yes:0.5 \\
      --seed 7 --out balanced.csv
conditions: COLUMN=VALUE (a category, a listed or whole number, a date), COLUMN=LOW..HIGH (a
  numeric or date range, both ends included, either end may be left out: balance=1000..),
  COLUMN= (missing values). Several conditions must all hold; rows come from the model's exact
  conditional distribution (no rejection). A condition that no row of the model can meet is
  refused.
class ratio: COLUMN=VALUE:SHARE gives VALUE that share of the rows (the other values keep their
  relative proportions); everything given COLUMN stays as the model has it.
"""


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option that has one; examples and exit codes kept as
    written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0 or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _count(what: str, least: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number of at least `least`, refused with the fix otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of {what}") \
                from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} {what}: give at least {least}{why}")
        return value
    return parse


def _plan_problem(epsilons: list[float], delta: float, plan: dict[str, object]) -> str:
    """What is wrong with --plan's fields at every ε asked for ('' if nothing, or if the
    dpsgd extra is missing: the method's own error names it)."""
    try:
        from fedsynth.synthesis import dpsgd
    except ImportError:
        return ""
    try:
        for eps in epsilons:
            dpsgd.TrainPlan.from_options(eps, delta, plan)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return ""


def _seed(text: str) -> int:
    """An argparse type: a seed, a whole number from 0 (numpy's generators take no other)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give a seed from 0 up")
    return value


def _plan_field(text: str) -> tuple[str, object]:
    """An argparse type: FIELD=VALUE of a training plan, the value read as JSON if it parses
    (numbers, true/false) and as text otherwise; the plan itself checks names and ranges."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE (e.g. noise=distributed)")
    import json

    try:
        value: object = json.loads(raw)
    except ValueError:
        value = raw
    return name.strip(), value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedsynth")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    from fedsynth.protocols import channels
    p = argparse.ArgumentParser(
        prog="fedsynth", formatter_class=_Help, epilog=EXIT_CODES, description=(
            "Federated differentially private synthetic data: parties keep their rows, the "
            "consortium gets one synthetic table."))
    p.add_argument("--version", action="version", version=f"fedsynth {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", formatter_class=_Help,
                       epilog=SIMULATE_EXAMPLES + "\n" + EXIT_CODES,
                       help="run a local multi-party job on a bundled dataset or a file",
                       description="Split a table among simulated parties, run the federated "
                       "DP job among them on this machine, and write the synthetic table, "
                       "its privacy report and a federated evaluation into --out.")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path, metavar="FILE",
                     help="pooled table to split into parties (CSV or Parquet)")
    src.add_argument("--dataset", metavar="NAME",
                     help="bundled dataset (default ISLR/Default; see --list)")
    s.add_argument("--list", action="store_true", help="list the bundled datasets and exit")
    s.add_argument("--schema", type=Path, metavar="FILE",
                   help="public schema JSON (default: drafted from the data; see "
                   "`fedsynth schema infer`)")
    s.add_argument("--target", metavar="COLUMN",
                   help="target column for the ML-efficacy measures (bundled datasets have one)")
    s.add_argument("--sensitive", metavar="COLUMN",
                   help="sensitive attribute for the report's bias measures")
    s.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                   help="skip the federated evaluation (no report.html)")
    s.add_argument("--evaluation-epsilon", type=float, default=1.0, metavar="ε",
                   help="ε of the DP evaluation, per party's held-out rows, charged to a "
                   "separate evaluation budget")
    s.add_argument("--exact-evaluation", action="store_true",
                   help="evaluate with exact sums (NOT differentially private; each party's "
                   "policy must allow it)")
    s.add_argument("--parties", default=5, metavar="N", type=_count(
                       "parties", 2, " (one party gains nothing from a federation: it could "
                       "synthesize alone at the same ε)"),
                   help="number of parties (2 or more)")
    s.add_argument("--partition", default="iid", metavar="SPEC",
                   help="how rows are split: iid (at random), dirichlet:ALPHA (the target's "
                   "label mix skewed; smaller ALPHA, more skew), column:NAME (each party gets "
                   "the rows of some values of column NAME, e.g. column:region)")
    s.add_argument("--epsilon", type=float, nargs="+", default=[1.0], metavar="ε",
                   help="total ε; several values run one job each on the same rows (the "
                   "sweep's ε add up) and add a privacy-utility curve to the report")
    s.add_argument("--delta", type=float, default=1e-6, metavar="δ", help="δ")
    s.add_argument("--channel", default="secagg", choices=channels.names(),
                   help="secagg: secure aggregation (pairwise masks); he: homomorphic "
                   "encryption (TenSEAL BFV) with a separate key holder, one round trip per "
                   "measurement; plain: unprotected, the coordinator sees each party's noisy "
                   "counts (simulation only)")
    s.add_argument("--threshold", type=_count("parties", 2), metavar="T",
                   help="t: fewest parties that must survive (default: 80%% of the parties, "
                   "at least the secure minimum)")
    s.add_argument("--colluders", type=_count("parties", 0), default=0, metavar="C",
                   help="c: parties that may collude with the coordinator")
    s.add_argument("--rows", type=_count("rows", 1), metavar="N",
                   help="synthetic rows (default: about the real row count, estimated "
                   "under DP; with --method dpsgd the pooled training rows)")
    s.add_argument("--method", default="marginals", choices=["marginals", "dpsgd"],
                   help="marginals: noisy marginals and a graphical model (the default, "
                   "best on tabular data); dpsgd: the parties train one generator with DP-SGD, "
                   "each step's clipped gradients summed with shared noise through the secure "
                   "sum (needs pip install -e \".[dpsgd]\")")
    s.add_argument("--plan", action="append", type=_plan_field, metavar="FIELD=VALUE",
                   help="a training plan field for --method dpsgd (repeatable), e.g. --plan "
                   "noise=local --plan rounds=20; the fields are listed in README "
                   "(the job file's [train] table)")
    s.add_argument("--holdout", type=float, default=0.2, metavar="FRACTION",
                   help="fraction of rows held out before partitioning, for evaluation only")
    s.add_argument("--seed", type=_seed, default=0,
                   help="seed of the partition, holdout and synthetic sampling; never of the "
                   "DP noise, which always comes from the operating system")
    s.add_argument("--engine", default="flower", choices=["flower", "local"],
                   help="flower: Flower's simulation engine (one client app per party); "
                   "local: the same code in-process, faster to start")
    s.add_argument("--out", type=Path, default=Path("fedsynth-out"), metavar="FOLDER",
                   help="output folder; must be new or empty (see --overwrite)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds an earlier fedsynth output (never another "
                   "folder)")
    s.add_argument("--format", dest="output_format", default="csv", choices=["csv", "parquet"],
                   help="the synthetic table's file: synthetic.csv, or synthetic.parquet (the "
                   "column types kept; smaller and faster for big tables)")
    s.add_argument("--condition", action="append", metavar="COLUMN=VALUE",
                   help="draw the synthetic table from the model given this (repeatable; as "
                   "in `fedsynth sample`); the evaluation scores the plain sample")
    s.add_argument("--class-ratio", action="append", metavar="COLUMN=VALUE:SHARE",
                   help="draw the synthetic table with VALUE of COLUMN at this share of the "
                   "rows (as in `fedsynth sample`)")

    e = sub.add_parser("evaluate", formatter_class=_Help,
                       epilog=EVALUATE_EXAMPLES + "\n" + EXIT_CODES,
                       help="score synthetic tables against real rows; writes report.html and "
                       "metrics.json", description="Score synthetic tables against real rows "
                       "the synthesizer did not see.")
    e.add_argument("--real", type=Path, required=True, metavar="FILE",
                   help="real rows the synthesizer did not see (held out), CSV or Parquet; a "
                   "simulation writes them as real-heldout.csv")
    e.add_argument("--synthetic", type=Path, required=True, nargs="+", metavar="FILE",
                   help="synthetic table(s); several (e.g. one per ε) add a privacy-utility "
                   "curve. A privacy.json beside a table is read for its ε")
    e.add_argument("--train", type=Path, metavar="FILE",
                   help="the rows the synthesizer saw: enables the membership-inference "
                   "measure and trains the TRTR model")
    e.add_argument("--target", metavar="COLUMN", help="target column for ML efficacy (TSTR "
                   "vs TRTR)")
    e.add_argument("--sensitive", metavar="COLUMN",
                   help="sensitive attribute for the bias measures (needs --target)")
    e.add_argument("--schema", type=Path, metavar="FILE",
                   help="public schema JSON (default: schema.json beside the first synthetic "
                   "table, else drafted from the tables)")
    e.add_argument("--seed", type=_seed, default=0,
                   help="seed of the evaluation's random splits and models")
    e.add_argument("--out", type=Path, default=Path("fedsynth-evaluation"), metavar="FOLDER",
                   help="output folder; must be new or empty (see --overwrite)")
    e.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds an earlier fedsynth output")

    sc = sub.add_parser("schema", help="schema tools", formatter_class=_Help)
    scs = sc.add_subparsers(dest="schema_command", required=True, metavar="COMMAND")
    inf = scs.add_parser("infer", formatter_class=_Help,
                         help="draft a schema from a party's file, to review and share",
                         description="Draft a public schema (column kinds, bounds, "
                         "categories) from FILE. Its bounds and categories are facts of "
                         "the file: review them and replace them with public knowledge "
                         "before sharing.",
                         epilog="examples:\n  fedsynth schema infer bank.csv --out "
                         "schema.json\n\n" + EXIT_CODES)
    inf.add_argument("file", type=Path, metavar="FILE", help="a CSV or Parquet table")
    inf.add_argument("--out", type=Path, metavar="FILE",
                     help="write here instead of standard output (a new file)")
    inf.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    hs = scs.add_parser("hash", formatter_class=_Help,
                        help="print a schema's sha256, the value a party pins in its policy",
                        epilog="examples:\n  fedsynth schema hash schema.json\n\n" + EXIT_CODES)
    hs.add_argument("file", type=Path, metavar="SCHEMA", help="a schema JSON file")

    k = sub.add_parser("keys", help="key material for a deployed consortium",
                       formatter_class=_Help)
    ks = k.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    ki = ks.add_parser(
        "init", formatter_class=_Help,
        help="make a consortium's CA, the coordinator's TLS certificate and every party's keys",
        description="Make, in a new folder: ca.pem and ca.key (the operator keeps ca.key "
        "offline), coordinator/ (TLS certificate and key), and one folder per party (its "
        "identity and node keys, ca.pem, consortium.toml and a policy.toml to fill in). Hand "
        "each party its folder over a secure channel.",
        epilog="examples:\n  fedsynth keys init --out consortium --coordinator-address "
        "link.example.org:8000 \\\n      --parties bank_a bank_b bank_c\n\n" + EXIT_CODES)
    ki.add_argument("--out", type=Path, required=True, metavar="FOLDER",
                    help="a new folder for the key material")
    ki.add_argument("--coordinator-address", required=True, metavar="HOST:PORT",
                    help="where the parties' nodes reach the coordinator (its certificate "
                    "names HOST)")
    ki.add_argument("--parties", nargs="+", required=True, metavar="NAME",
                    help="the parties' names, two or more")
    ki.add_argument("--key-holders", nargs="+", default=[], metavar="NAME",
                    help="key holders for the he channel (each runs `fedsynth keyholder "
                    "start`; never the coordinator's machine)")
    kp = ks.add_parser(
        "party", formatter_class=_Help,
        help="make one party's own secret keys, so the operator never holds them",
        description="Make this party's identity and node keys in a new folder and print the "
        "public halves as a consortium.toml entry, for the operator to put in place of the "
        "entry `keys init` made (and to hand the new consortium.toml to every member).",
        epilog="examples:\n  fedsynth keys party --name bank_a --out bank_a-keys\n\n"
        + EXIT_CODES)
    kp.add_argument("--name", required=True, metavar="NAME", help="this party's name")
    kp.add_argument("--out", type=Path, required=True, metavar="FOLDER",
                    help="a new folder for the secret keys")

    nd = sub.add_parser("node", help="a party's node", formatter_class=_Help)
    nds = nd.add_subparsers(dest="node_command", required=True, metavar="COMMAND")
    nc = nds.add_parser("check", formatter_class=_Help,
                        help="check a party's policy file and say what it allows",
                        epilog="examples:\n  fedsynth node check --policy bank_a/policy.toml"
                        "\n\n" + EXIT_CODES)
    nc.add_argument("--policy", type=Path, required=True, metavar="FILE",
                    help="the party's policy (TOML)")
    nc.add_argument("--keys", type=Path, metavar="FOLDER",
                    help="the party's key folder (default: the policy's `keys`)")
    ns = nds.add_parser(
        "start", formatter_class=_Help,
        help="run the party's node: connect to the coordinator and answer jobs under the "
        "policy",
        description="Start the party's Flower SuperNode (TLS, the party's node key, process "
        "isolation) and the party's own runtime, which answers the coordinator with the "
        "installed fedsynth app under the policy read from this machine. It only dials out "
        "to the coordinator; it runs until Ctrl-C. The SuperNode's log goes to "
        "supernode.log beside the policy.",
        epilog="examples:\n  fedsynth node start --coordinator link.example.org:9443 "
        "--keys consortium/bank_a \\\n      --policy bank_a/policy.toml\n\n" + EXIT_CODES)
    _dial_option(ns)
    ns.add_argument("--keys", type=Path, required=True, metavar="FOLDER",
                    help="the party's key folder (node-auth.key, identity.key, ca.pem, "
                    "consortium.toml)")
    ns.add_argument("--policy", type=Path, required=True, metavar="FILE",
                    help="the party's policy (TOML); check it with `fedsynth node check`")

    kh = sub.add_parser("keyholder", help="the he channel's key holder",
                        formatter_class=_Help)
    khs = kh.add_subparsers(dest="keyholder_command", required=True, metavar="COMMAND")
    khst = khs.add_parser(
        "start", formatter_class=_Help,
        help="run a key holder: make each he job's key pair and decrypt each round's sum once",
        description="Start the key holder's Flower SuperNode (TLS, its node key, process "
        "isolation) and its runtime: for each job over the he channel it makes a fresh key "
        "pair, hands the coordinator the public context signed with its identity key, and "
        "decrypts each round's sum of at least t parties' ciphertexts once. Run it on a "
        "machine the coordinator's operator does not control: together they could decrypt "
        "each party's contribution (README, threat model). It only dials out; it runs until "
        "Ctrl-C. The SuperNode's log goes to supernode.log in --keys.",
        epilog="examples:\n  fedsynth keyholder start --coordinator link.example.org:9443 "
        "--keys consortium/kh\n\n" + EXIT_CODES)
    _dial_option(khst)
    khst.add_argument("--keys", type=Path, required=True, metavar="FOLDER",
                      help="the key holder's folder from `fedsynth keys init --key-holders` "
                      "(node-auth.key, identity.key, ca.pem, consortium.toml)")

    co = sub.add_parser("coordinator", help="the consortium's coordinator",
                        formatter_class=_Help)
    cos = co.add_subparsers(dest="coordinator_command", required=True, metavar="COMMAND")
    cs = cos.add_parser(
        "start", formatter_class=_Help,
        help="run the coordinator: accept the parties' nodes and run submitted jobs",
        description="Start the Flower SuperLink (TLS, node authentication, process "
        "isolation) on one port, register every party's node key from consortium.toml, "
        "and run each job `fedsynth run` submits, writing its outputs on this machine. It "
        "runs until Ctrl-C. Open only PORT to the parties; the same port serves the "
        "Control API (job submission), so restrict who reaches it (see README, Deploying).",
        epilog="examples:\n  fedsynth coordinator start --keys consortium --port 9443\n"
        "  fedsynth coordinator start --keys consortium --host 0.0.0.0 --port 9443\n\n"
        + EXIT_CODES)
    cs.add_argument("--keys", type=Path, required=True, metavar="FOLDER",
                    help="the consortium folder of `fedsynth keys init` (ca.pem, "
                    "coordinator/)")
    cs.add_argument("--port", type=_count("port", 1), default=9443, help="the one TCP port")
    cs.add_argument("--host", default="127.0.0.1",
                    help="address to listen on; 0.0.0.0 for parties on other machines")
    cs.add_argument("--state", type=Path, metavar="FOLDER",
                    help="the SuperLink's database and log (default: KEYS/coordinator/state)")
    cs.add_argument("--outputs", type=Path, metavar="FOLDER",
                    help="where jobs' output folders are made; a job names only a new folder "
                    "inside it (default: KEYS/coordinator/outputs)")

    sm = sub.add_parser(
        "sample", formatter_class=_Help, epilog=SAMPLE_EXAMPLES + "\n" + EXIT_CODES,
        help="draw more rows from a job's saved model: conditioned, or a class oversampled",
        description="Draw synthetic rows from the model a job saved in its output folder "
        "(model.json, model.npz beside schema.json), with the columns and types of its "
        "synthetic.csv. Post-processing of the job's DP output: no privacy cost, no party "
        "involved.")
    sm.add_argument("--model", type=Path, required=True, metavar="RUN_DIR",
                    help="a job's output folder (of `fedsynth simulate` or `fedsynth run`)")
    sm.add_argument("--rows", type=_count("rows", 1), required=True, metavar="N",
                    help="rows to draw")
    sm.add_argument("--seed", type=_seed, metavar="S",
                    help="seed of the draw: the same seed gives the same rows (default: a "
                    "fresh one, printed on standard error)")
    sm.add_argument("--condition", action="append", metavar="COLUMN=VALUE",
                    help="keep to rows where this holds (repeatable; see below)")
    sm.add_argument("--class-ratio", action="append", metavar="COLUMN=VALUE:SHARE",
                    help="give VALUE of COLUMN this share of the rows (repeatable, one column)")
    sm.add_argument("--out", type=Path, metavar="FILE.csv",
                    help="write here instead of standard output (a new file)")
    sm.add_argument("--format", dest="output_format", choices=["csv", "parquet"],
                    help="csv or parquet (the column types kept; needs --out); default: by "
                    "the --out suffix (.parquet or .pq), else csv")
    sm.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    r = sub.add_parser(
        "run", formatter_class=_Help,
        help="submit a job file to a running coordinator and wait for it",
        description="Check the job file against consortium.toml, submit it to the "
        "coordinator, show its progress and wait for its end. The outputs (synthetic.csv, "
        "privacy.json, metrics.json, schema.json, model.json and model.npz (for `fedsynth "
        "sample`), job.log, report.html when evaluated) are "
        "written by the coordinator into --out ON THE COORDINATOR'S MACHINE (on loopback, "
        "this machine); nothing is written when the job fails.",
        epilog="examples:\n  fedsynth run job.toml --coordinator 127.0.0.1:9443 --keys "
        "consortium --out runs/joint\n\n" + EXIT_CODES)
    r.add_argument("job", type=Path, metavar="JOB", help="the job file (TOML)")
    r.add_argument("--coordinator", required=True, metavar="HOST:PORT",
                   help="the coordinator's address")
    r.add_argument("--keys", type=Path, required=True, metavar="FOLDER",
                   help="a folder with consortium.toml and ca.pem (the consortium's, or a "
                   "party's)")
    r.add_argument("--out", required=True, metavar="NAME",
                   help="a new output folder, named relative to the coordinator's outputs "
                   "folder (`fedsynth coordinator start --outputs`) on its machine")
    r.add_argument("--format", dest="output_format", choices=["csv", "parquet"],
                   help="synthetic.csv or synthetic.parquet (default: the job file's "
                   "`format`, else csv)")
    return p


def _dial_option(p: argparse.ArgumentParser) -> None:
    """--coordinator, for the nodes that dial out to it (a party's, a key holder's)."""
    p.add_argument("--coordinator", required=True, metavar="HOST:PORT",
                   help="the coordinator's address (consortium.toml's `coordinator`)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("fedsynth").setLevel(logging.INFO)  # our progress, not libraries' chatter
    with _interrupts_stop_everything():
        try:
            if args.command == "schema":
                return _schema_hash(args) if args.schema_command == "hash" \
                    else _schema_infer(args)
            if args.command == "keys":
                return _keys_party(args) if args.keys_command == "party" \
                    else _keys_init(args)
            if args.command == "node":
                return _node_start(args) if args.node_command == "start" \
                    else _node_check(args)
            if args.command == "keyholder":
                return _keyholder_start(args)
            if args.command == "coordinator":
                return _coordinator_start(args)
            if args.command == "run":
                return _run(args)
            if args.command == "evaluate":
                return _evaluate(args)
            if args.command == "sample":
                return _sample(args)
            return _simulate(args)
        except FedsynthError as exc:  # bad input, or the job stopped: one line with the fix
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except OSError as exc:  # a file or folder of the user's that cannot be read or written
            where = f" {exc.filename}" if exc.filename else ""
            print(f"error: cannot use{where or ' a file'}: {exc.strerror or exc}",
                  file=sys.stderr)
            return EXIT_INPUT
        except Exception as exc:
            return _internal_error(exc)


def _internal_error(exc: BaseException) -> int:
    """A bug, not the user's mistake: one line on screen, the full trace in a file."""
    import tempfile
    import time
    import traceback

    path = Path(tempfile.gettempdir()) / (f"fedsynth-error-{time.strftime('%Y%m%d-%H%M%S')}-"
                                          f"{os.getpid()}.log")
    try:
        path.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
        where = f"the full trace is in {path}"
    except OSError:
        where = "the trace could not be written"
    first = (str(exc).splitlines() or [""])[0][:200]
    print(f"internal error: {type(exc).__name__}: {first} ({where}; please report it)",
          file=sys.stderr)
    return EXIT_INTERNAL


@contextmanager
def _interrupts_stop_everything() -> Iterator[None]:
    """One Ctrl-C stops the command at once: worker threads (Flower's server app, thread
    pools) and engine processes (Ray) are not unwound, which can hang; instead the temporary
    folders are removed, child processes are killed, one line is printed, and the process
    exits with 130. Nothing is half-written: outputs appear by one rename at the very end,
    and a party's ledger repairs a torn last line (counting it as spent)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        print("\ninterrupted: stopped everything; no output was written", file=sys.stderr,
              flush=True)
        from fedsynth import scratch

        scratch.remove_all()
        _kill_children()
        sys.stdout.flush()
        os._exit(EXIT_INTERRUPTED)

    old = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _kill_children() -> None:
    """Kill every process descended from this one (Ray's server, raylet and workers)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*/stat") if Path("/proc").is_dir() else []:
        try:
            stat = entry.read_text()
            parent[int(entry.parent.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    ours: set[int] = set()
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, pp in parent.items() if pp in frontier} - ours
        ours |= frontier
    for pid in ours:
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _schema_hash(args: argparse.Namespace) -> int:
    from fedsynth.protocols.spec import schema_sha256
    from fedsynth.synthesis.schema import Schema

    print(schema_sha256(Schema.load(args.file)))  # SchemaError: main prints it, exit 3
    return 0


def _keys_init(args: argparse.Namespace) -> int:
    from fedsynth.client_node.policy_file import template
    from fedsynth.crypto.keyfiles import init_consortium

    _new_key_folder(args.out)
    init_consortium(args.out, args.coordinator_address, list(args.parties),  # KeyFileError
                    list(args.key_holders))
    for name in args.parties:
        (args.out / name / "policy.toml").write_text(template(name), encoding="utf-8")
    print(f"wrote {args.out}/: ca.pem, ca.key (keep it offline), coordinator/, "
          f"{', '.join(n + '/' for n in [*args.parties, *args.key_holders])}")
    print("hand each party its folder over a secure channel; each fills in its policy.toml")
    return 0


def _new_key_folder(out: Path) -> None:
    from fedsynth.errors import InputError

    if out.exists():
        raise InputError(f"--out {out} exists: keys go into a new folder (never over old keys)")


def _keys_party(args: argparse.Namespace) -> int:
    from fedsynth.crypto.keyfiles import Consortium, party_keys

    _new_key_folder(args.out)
    identity, node_key = party_keys(args.out, args.name)
    print(f"# wrote {args.out}/identity.key and node-auth.key (secret; mode 0600)",
          file=sys.stderr)
    print("# send the operator this entry for consortium.toml (public):", file=sys.stderr)
    entry = Consortium("", {args.name: identity}, {args.name: node_key}).to_toml()
    print(entry[entry.index("[parties."):].strip())
    return 0


def _node_check(args: argparse.Namespace) -> int:
    from fedsynth.client_node.policy_file import PolicyFileError, load_policy

    try:
        pol = load_policy(args.policy, keys=args.keys)
    except PolicyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(f"policy of {pol.party_name}: data {pol.data_path}, ledger {pol.ledger_path}")
    spent = pol.ledger().spent()
    print(f"ε cap {pol.epsilon_cap:g} (spent so far {spent:.4f}), δ {pol.delta:g}, channels "
          f"{', '.join(pol.channels)}, at most {pol.max_parties} parties, assumes "
          f"{pol.assume_colluders} colluders, evaluation {pol.evaluation}")
    print(f"consortium: {', '.join(pol.consortium)}; schema sha256 {pol.schema_sha256}")
    return 0


def _node_start(args: argparse.Namespace) -> int:
    from fedsynth.client_node.deploy import NodeStartError, start_node
    from fedsynth.client_node.policy_file import PolicyFileError

    try:
        start_node(args.coordinator, args.keys, args.policy)
    except (PolicyFileError, NodeStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    return 0


def _keyholder_start(args: argparse.Namespace) -> int:
    from fedsynth.client_node.deploy import NodeStartError, start_key_holder

    try:
        start_key_holder(args.coordinator, args.keys)
    except NodeStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    return 0


def _coordinator_start(args: argparse.Namespace) -> int:
    from fedsynth.coordinator.deploy import CoordinatorError, start_coordinator
    from fedsynth.crypto.keyfiles import KeyFileError

    logging.getLogger("fedsynth.runtime").setLevel(logging.INFO)
    try:
        start_coordinator(args.keys, args.port, args.host, state_dir=args.state,
                          outputs=args.outputs)
    except (CoordinatorError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    return 0


def _run(args: argparse.Namespace) -> int:
    from fedsynth.coordinator.deploy import CoordinatorError, output_name, submit_job
    from fedsynth.coordinator.job_file import JobFileError
    from fedsynth.crypto.keyfiles import KeyFileError

    try:
        out = output_name(args.out)
        run_id, sub, details = submit_job(args.job, args.coordinator, args.keys, Path(out),
                                          progress=lambda m: print(m, flush=True),
                                          output_format=args.output_format)
    except (ValueError, JobFileError, KeyFileError, CoordinatorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if sub == "completed":
        print(f"run {run_id} finished: outputs in {out}/ inside the coordinator's outputs "
              "folder, on its machine")
        return 0
    if not details and sub == "stopped":
        details = ("the coordinator stopped it: it was restarted mid-job, or its operator "
                   "stopped the run; submit the job again")
    if sub == "lost":
        print(f"error: run {run_id}: {details}", file=sys.stderr)
        return EXIT_JOB
    print(f"error: run {run_id} {sub}, nothing was written: {details or 'no reason given'}",
          file=sys.stderr)
    return EXIT_JOB


def _out_file_refused(args: argparse.Namespace) -> bool:
    """An --out file that exists (and no --overwrite) or is a folder: said, and refused."""
    if args.out and args.out.exists() and not (args.overwrite and args.out.is_file()):
        what = "a folder" if args.out.is_dir() else "an existing file"
        print(f"error: --out {args.out} is {what}: give a new file name"
              f"{'' if args.out.is_dir() else ', or add --overwrite to replace it'}",
              file=sys.stderr)
        return True
    return False


def _write_table(out: Path, rows: pd.DataFrame, fmt: str) -> None:
    """Write a table to `out` whole or not at all (a temporary file beside it, then renamed)."""
    from fedsynth.synthesis import table_file

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        table_file.write_table(rows, tmp, fmt)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def _write_file(out: Path, text: str) -> None:
    """Write `text` to `out` whole or not at all (a temporary file beside it, then renamed)."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)


def _sample(args: argparse.Namespace) -> int:
    import secrets

    from fedsynth.synthesis import table_file
    from fedsynth.synthesis.model import load_model

    if _out_file_refused(args):
        return EXIT_INPUT
    fmt = args.output_format or ("parquet" if args.out and args.out.suffix.lower() in (
        ".parquet", ".pq") else "csv")
    if fmt == "parquet" and not args.out:
        print("error: --format parquet writes a file: give --out FILE.parquet",
              file=sys.stderr)
        return EXIT_INPUT
    model = load_model(args.model)  # ModelFileError: main prints it, exit 3
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"drawing {args.rows:,} rows from {args.model} (seed {seed})", file=sys.stderr)
    rows = model.sample(args.rows, seed=seed, conditions=args.condition or (),
                        class_ratio=args.class_ratio or ())  # ConditionError: exit 3
    if args.out:
        _write_table(args.out, rows, fmt)
        print(f"wrote {args.out} ({len(rows):,} rows)", file=sys.stderr)
    else:
        sys.stdout.write(table_file.csv_text(rows))
    return 0


def _schema_infer(args: argparse.Namespace) -> int:
    from fedsynth.client_node.data import DataFileError, read_table
    from fedsynth.synthesis.schema import SchemaError, draft_schema_with_notes

    if _out_file_refused(args):
        return EXIT_INPUT
    try:
        schema, notes = draft_schema_with_notes(read_table(args.file))
    except (DataFileError, SchemaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    for note in notes:
        print(f"review: {note}", file=sys.stderr)  # stderr: stdout may be the JSON
    text = schema.to_json()
    if args.out:
        _write_file(args.out, text + "\n")
        print(f"wrote {args.out}; review the bounds and categories before sharing it",
              file=sys.stderr)
    else:
        print(text)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from fedsynth.client_node.data import DataFileError, read_table
    from fedsynth.evaluation.local import Run, evaluate_runs
    from fedsynth.evaluation.output import check_out, write_folder
    from fedsynth.evaluation.plan import EvalOptions
    from fedsynth.synthesis.schema import DataValidationError, Schema, SchemaError

    log = logging.getLogger("fedsynth")
    try:
        check_out(args.out, overwrite=args.overwrite)
        schema_file = args.schema or args.synthetic[0].parent / "schema.json"
        schema = Schema.load(schema_file) if args.schema or schema_file.exists() else None
        if schema is not None:
            log.info("schema: %s", schema_file)
        runs = []
        for path in args.synthetic:
            privacy_file = path.parent / "privacy.json"
            privacy = json.loads(privacy_file.read_text()) if privacy_file.exists() else None
            runs.append(Run(read_table(path, schema), str(path), privacy))
        doc, html = evaluate_runs(
            read_table(args.real, schema), runs,
            train=read_table(args.train, schema) if args.train else None,
            schema=schema, options=EvalOptions(target=args.target, sensitive=args.sensitive,
                                               seed=args.seed),
            progress=lambda m: log.info("%s", m))
    except (DataFileError, DataValidationError, SchemaError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    out = write_folder(args.out, {"metrics.json": json.dumps(doc, indent=2) + "\n",
                                  "report.html": html}, overwrite=args.overwrite)
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
                  evaluation_epsilon=None if args.exact_evaluation else args.evaluation_epsilon,
                  overwrite=args.overwrite, conditions=args.condition or None,
                  class_ratio=args.class_ratio or None, method=args.method,
                  output_format=args.output_format)
    if args.plan:
        if args.method != "dpsgd":
            print("error: --plan sets fields of a dpsgd training plan; add --method dpsgd",
                  file=sys.stderr)
            return EXIT_INPUT
        from fedsynth.coordinator.options import JobOptions

        problem = _plan_problem(args.epsilon, args.delta, dict(args.plan))
        if problem:  # before any party starts: a typo costs no wait
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_INPUT
        kwargs["options"] = JobOptions(rows=args.rows, seed=args.seed, train=dict(args.plan))
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
    print(f"\nsynthetic table: {len(res.synthetic)} rows -> {res.out}/synthetic."
          f"{res.output_format}")
    print(f"privacy: ε={res.privacy['epsilon_spent']:.4f} of {args.epsilon[0]}, δ={args.delta}, "
          f"t={res.privacy['threshold_t']}, c={res.privacy['colluders_c']}, channel "
          f"{res.privacy['channel']}")
    from fedsynth.protocols import channels

    if not channels.get(res.privacy["channel"]).protected:
        print(f"WARNING: channel {res.privacy['channel']}: the coordinator saw each party's "
              "noisy counts in the clear (no secure aggregation); each party's own ε is in "
              "privacy.json")
    if not res.privacy.get("differentially_private", True):
        print(f"WARNING: {res.privacy['warning']}")
    if "tvd" in m:
        ev = m.get("evaluation", {})
        kind = (f"DP at ε={ev.get('epsilon')} per party" if ev.get("dp")
                else "exact sums, NOT differentially private")
        print(f"federated evaluation against the parties' held-out rows ({kind}):")
        _print_summary(m)
        print(f"report: {res.out}/report.html; held-out real rows (private, for fedsynth "
              f"evaluate): {res.out}/real-heldout.csv")
    elif "evaluation_error" in m:
        print(f"the evaluation did not finish: {m['evaluation_error']}")
    print(f"time: {m['timings_seconds']['simulation_total']:.1f} s; log: {res.out}/job.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
