"""A party's policy file (TOML): its own rules, read on its own machine only.

Nothing the coordinator sends can change what is read here: the node loads the file at
start, and every request is checked against it (client_node.node). Every problem in the file
is reported at once, each with the key and how to fix it. Relative paths are relative to the
policy file's folder.

Example (`fedsynth keys init` writes one per party, to fill in):

    party = "bank_a"                       # this party's name in consortium.toml
    data = "data/bank_a.csv"               # the party's rows (CSV or Parquet)
    holdout = "data/bank_a-holdout.csv"    # optional: rows kept out of synthesis, to evaluate
    ledger = "ledger.jsonl"                # every release this party ever made
    schema_sha256 = "..."                  # the one public schema this party takes part with
    epsilon_cap = 3.0                      # total ε over all jobs on these rows
    delta = 1e-6
    channels = ["secagg"]                  # or ["secagg", "he"]
    key_holders = []                       # he channel: the key holders this party accepts
    assume_colluders = 0                   # parties that may collude with the coordinator
    max_parties = 10
    evaluation = "dp"                      # off | dp | exact
    evaluation_epsilon_cap = 1.0
    keys = "keys"                          # identity.key, consortium.toml, ca.pem
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from fedsynth.client_node.node import NodePolicy
from fedsynth.crypto.keyfiles import (
    CA_CERT,
    CONSORTIUM,
    IDENTITY_KEY,
    Consortium,
    KeyFileError,
    check_identity,
    read_identity,
)
from fedsynth.errors import FileProblems
from fedsynth.protocols.channels import names as registered_channels
from fedsynth.protocols.spec import GRAPHS

CHANNELS = registered_channels()  # what a policy may list: the registered channels
EVALUATION = ("off", "dp", "exact")
REQUIRED = ("party", "data", "ledger", "schema_sha256", "epsilon_cap", "delta")
KNOWN = {*REQUIRED, "keys", "holdout", "channels", "assume_colluders", "max_parties", "evaluation",
         "evaluation_epsilon_cap", "max_evaluations", "max_setups_per_hour", "key_holders",
         "graphs"}


class PolicyFileError(FileProblems):
    """Every problem of a policy file, listed at once."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("policy file", path, problems)


def load_policy(path: Path, *, keys: Path | None = None) -> NodePolicy:
    """The party's NodePolicy from its TOML file, or PolicyFileError with every problem.

    `keys` (the party's key folder, e.g. from `fedsynth node start --keys`) takes the place of
    the file's `keys` entry."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyFileError(path, [f"cannot read it: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(path, [f"not valid TOML: {exc}"]) from None
    base = path.resolve().parent
    problems: list[str] = []
    problems += [f"unknown key {k!r} (known: {', '.join(sorted(KNOWN))})"
                 for k in doc if k not in KNOWN]
    problems += [f"missing {k!r}" for k in REQUIRED if k not in doc]
    get = _Getter(doc, problems)
    party = get.text("party")
    data = get.path("data", base, must_exist=True)
    holdout = get.path("holdout", base, must_exist=True) if "holdout" in doc else None
    ledger = get.path("ledger", base, must_exist=False)
    sha = get.text("schema_sha256")
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        problems.append("'schema_sha256' must be 64 lowercase hex digits (fedsynth schema "
                        "hash SCHEMA.json prints it)")
    eps = get.number("epsilon_cap", low=0.0)
    delta = get.number("delta", low=0.0, high=1.0)
    channels = tuple(get.choices("channels", CHANNELS, default=["secagg"]))
    graphs = tuple(get.choices("graphs", GRAPHS, default=["complete"]))
    colluders = get.integer("assume_colluders", default=0, low=0)
    max_parties = get.integer("max_parties", default=1000, low=2)
    evaluation = get.choice("evaluation", EVALUATION, default="off")
    ev_cap = get.number("evaluation_epsilon_cap", low=0.0, default=0.0, strict=False)
    max_evals = get.integer("max_evaluations", default=1, low=1)
    setups = get.integer("max_setups_per_hour", default=60, low=1)
    if evaluation == "dp" and not ev_cap:
        problems.append("'evaluation' is \"dp\" but 'evaluation_epsilon_cap' is 0: give the "
                        "ε this party allows for evaluations")
    if evaluation != "off" and holdout is None:
        problems.append(f"'evaluation' is {evaluation!r} but no 'holdout' file is given: "
                        "evaluation uses held-out rows only")
    if keys is not None:
        keys = Path(keys).expanduser().resolve()
        if not keys.is_dir():
            problems.append(f"key folder {keys} does not exist")
            keys = None
    elif "keys" in doc:
        keys = get.path("keys", base, must_exist=True)
    else:
        problems.append("missing 'keys' (the folder with identity.key, consortium.toml and "
                        "ca.pem), or give it with --keys")
    identity, consortium = b"", None
    if keys is not None:
        try:
            consortium = Consortium.load(keys / CONSORTIUM)
            identity = read_identity(keys / IDENTITY_KEY)
            if party:
                check_identity(identity, party, consortium, keys / IDENTITY_KEY)
            if not (keys / CA_CERT).is_file():
                problems.append(f"'keys' folder {keys} lacks {CA_CERT}, the certificate the "
                                "coordinator is checked against")
        except KeyFileError as exc:
            problems.append(str(exc))
    if consortium is not None and party and party not in consortium.identities:
        problems.append(f"party {party!r} is not in {keys}/{CONSORTIUM} (it lists "
                        f"{', '.join(consortium.identities)})")
    holders = doc.get("key_holders", [])
    if not isinstance(holders, list) or not all(isinstance(h, str) for h in holders):
        problems.append("'key_holders' must be a list of key holders' names from "
                        "consortium.toml, e.g. [\"kh\"]")
        holders = []
    if consortium is not None:
        unknown = [h for h in holders if h not in consortium.key_holders]
        if unknown:
            problems.append(f"'key_holders' {unknown} are not key holders in {keys}/{CONSORTIUM}"
                            f" (it lists {', '.join(consortium.key_holders) or 'none'})")
    if "he" in channels and not holders:
        problems.append("'channels' allows \"he\" but 'key_holders' is empty: list the key "
                        "holders this party accepts (a job over he names one)")
    if problems:
        raise PolicyFileError(path, problems)
    assert data is not None and ledger is not None and consortium is not None
    return NodePolicy(data_path=data, ledger_path=ledger, epsilon_cap=eps, delta=delta,
                      party_name=party, identity_key=identity,
                      consortium=consortium.identities, schema_sha256=sha, channels=channels,
                      graphs=graphs, assume_colluders=colluders, max_parties=max_parties,
                      max_setups_per_hour=setups, evaluation=evaluation,
                      evaluation_epsilon_cap=ev_cap, max_evaluations=max_evals,
                      holdout_path=holdout,
                      key_holders=frozenset(consortium.key_holders[h] for h in holders
                                            if h in consortium.key_holders))


class _Getter:
    """Typed reads of the policy's keys; each wrong value adds one problem and a neutral
    placeholder, so that every problem is found in one pass."""

    def __init__(self, doc: dict[str, Any], problems: list[str]) -> None:
        self.doc, self.problems = doc, problems

    def text(self, key: str) -> str:
        v = self.doc.get(key)
        if key in self.doc and (not isinstance(v, str) or not v.strip()):
            self.problems.append(f"{key!r} must be a non-empty string, got {v!r}")
            return ""
        return v if isinstance(v, str) else ""

    def path(self, key: str, base: Path, *, must_exist: bool) -> Path | None:
        text = self.text(key)
        if not text:
            return None
        p = Path(text).expanduser()
        p = p if p.is_absolute() else base / p
        if must_exist and not p.exists():
            self.problems.append(f"{key!r}: {p} does not exist")
        elif not must_exist and not p.parent.is_dir():
            self.problems.append(f"{key!r}: the folder {p.parent} does not exist; create it")
        return p

    def number(self, key: str, *, low: float, high: float | None = None,
               default: float | None = None, strict: bool = True) -> float:
        v = self.doc.get(key, default)
        if v is None:
            return 0.0
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
            and (v > low if strict else v >= low) and (high is None or v < high)
        if not ok:
            bounds = f"{'above' if strict else 'at least'} {low}" + \
                (f" and below {high}" if high is not None else "")
            self.problems.append(f"{key!r} must be a number {bounds}, got {v!r}")
            return 0.0
        return float(v)

    def integer(self, key: str, *, default: int, low: int) -> int:
        v = self.doc.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            self.problems.append(f"{key!r} must be a whole number, at least {low}, got {v!r}")
            return default
        return v

    def choice(self, key: str, allowed: tuple[str, ...], *, default: str) -> str:
        v = self.doc.get(key, default)
        if v not in allowed:
            self.problems.append(f"{key!r} must be one of {', '.join(allowed)}, got {v!r}")
            return default
        return str(v)

    def choices(self, key: str, allowed: tuple[str, ...], *, default: list[str]) -> list[str]:
        v = self.doc.get(key, default)
        if not isinstance(v, list) or not v or any(x not in allowed for x in v):
            self.problems.append(f"{key!r} must be a list drawn from {', '.join(allowed)}, "
                                 f"got {v!r}")
            return default
        return [str(x) for x in v]


def template(party: str) -> str:
    """A policy file for `party` to fill in (written by `fedsynth keys init` into its folder);
    the values that depend on the party's data are left for it to set."""
    return f'''# {party}'s policy, read on this machine only: no coordinator request changes it.
# Paths are relative to this file. Check it with: fedsynth node check --policy policy.toml
party = "{party}"
keys = "."                                # identity.key, consortium.toml, ca.pem
data = "data.csv"                         # this party's rows (CSV or Parquet): set it
# holdout = "holdout.csv"                 # rows kept out of synthesis, to evaluate against
ledger = "ledger.jsonl"                   # every release this party makes, kept for good
schema_sha256 = "SET-ME"                  # fedsynth schema hash SCHEMA.json
epsilon_cap = 1.0                         # total ε over all jobs on these rows
delta = 1e-6
channels = ["secagg"]                     # add "he" to take part over homomorphic encryption
# graphs = ["complete", "sparse"]         # secagg: also take part in SecAgg+ (sparse graph)
# key_holders = ["kh"]                    # he: the key holders (consortium.toml) accepted
assume_colluders = 0                      # parties that may collude with the coordinator
max_parties = 100
evaluation = "off"                        # off | dp | exact (exact is not DP)
# evaluation_epsilon_cap = 1.0
'''
