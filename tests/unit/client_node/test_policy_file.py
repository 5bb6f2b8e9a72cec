"""A party's policy file: loaded into the NodePolicy it states, every problem listed at once."""

from __future__ import annotations

import stat
from pathlib import Path

import pandas as pd
import pytest

from fedsynth.client_node.policy_file import PolicyFileError, load_policy
from fedsynth.crypto.keyfiles import (
    CONSORTIUM,
    IDENTITY_KEY,
    NODE_KEY,
    SERVER_KEY,
    Consortium,
    KeyFileError,
    init_consortium,
)
from fedsynth.crypto.keys import public_identity

SHA = "ab" * 32


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    init_consortium(tmp_path / "consortium", "127.0.0.1:8000", ["bank_a", "bank_b", "bank_c"])
    return tmp_path / "consortium"


def _policy(tmp_path: Path, keys: Path, **over: object) -> Path:
    pd.DataFrame({"a": [1, 2]}).to_csv(tmp_path / "rows.csv", index=False)
    doc: dict[str, object] = {"party": "bank_a", "data": "rows.csv", "ledger": "ledger.jsonl",
                              "schema_sha256": SHA, "epsilon_cap": 3.0, "delta": 1e-6,
                              "keys": str(keys / "bank_a")}
    doc.update(over)
    lines = []
    for k, v in doc.items():
        if v is None:
            continue
        if isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        elif isinstance(v, list):
            lines.append(f"{k} = [{', '.join(repr(x).replace(chr(39), chr(34)) for x in v)}]")
        else:
            lines.append(f"{k} = {v!r}".replace("True", "true").replace("False", "false"))
    path = tmp_path / "policy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_good_policy_loads_into_the_node_policy(tmp_path: Path, keys: Path) -> None:
    pol = load_policy(_policy(tmp_path, keys, channels=["secagg"], max_parties=5))
    assert pol.party_name == "bank_a" and pol.data_path == tmp_path / "rows.csv"
    assert pol.ledger_path == tmp_path / "ledger.jsonl"  # relative to the policy file
    assert pol.epsilon_cap == 3.0 and pol.max_parties == 5 and pol.channels == ("secagg",)
    cons = Consortium.load(keys / CONSORTIUM)
    assert set(pol.consortium) == {"bank_a", "bank_b", "bank_c"}
    assert public_identity(pol.identity_key) == cons.identities["bank_a"]
    assert pol.evaluation == "off"
    assert pol.graphs == ("complete",)  # SecAgg+'s sparse graph only when the party says so
    sparse = load_policy(_policy(tmp_path, keys, graphs=["complete", "sparse"]))
    assert sparse.graphs == ("complete", "sparse")
    with pytest.raises(PolicyFileError, match="'graphs' must be a list"):
        load_policy(_policy(tmp_path, keys, graphs=["ring"]))


def test_every_problem_is_listed_at_once(tmp_path: Path, keys: Path) -> None:
    path = _policy(tmp_path, keys, data="missing.csv", epsilon_cap=-1, delta=2,
                   channels=["carrier-pigeon"], evaluation="dp", schema_sha256="xyz",
                   colour="blue", ledger=None)
    with pytest.raises(PolicyFileError) as info:
        load_policy(path)
    text = str(info.value)
    for needle in ("missing.csv does not exist", "'epsilon_cap' must be a number above 0",
                   "'delta' must be a number above 0.0 and below 1.0", "carrier-pigeon",
                   "evaluation_epsilon_cap", "no 'holdout' file", "64 lowercase hex",
                   "unknown key 'colour'", "missing 'ledger'"):
        assert needle in text, needle
    assert len(info.value.problems) >= 9


def test_another_partys_identity_key_is_refused(tmp_path: Path, keys: Path) -> None:
    (keys / "bank_a" / IDENTITY_KEY).unlink()
    (keys / "bank_a" / IDENTITY_KEY).write_bytes((keys / "bank_b" / IDENTITY_KEY).read_bytes())
    with pytest.raises(PolicyFileError, match=r"not the one consortium\.toml lists"):
        load_policy(_policy(tmp_path, keys))


def test_unknown_party_and_bad_toml(tmp_path: Path, keys: Path) -> None:
    with pytest.raises(PolicyFileError, match=r"not in .*consortium\.toml"):
        load_policy(_policy(tmp_path, keys, party="bank_z"))
    bad = tmp_path / "bad.toml"
    bad.write_text("party = \n")
    with pytest.raises(PolicyFileError, match="not valid TOML"):
        load_policy(bad)


def test_consortium_keys_are_private_where_secret(keys: Path) -> None:
    for secret in (keys / "ca.key", keys / "coordinator" / SERVER_KEY,
                   keys / "bank_a" / IDENTITY_KEY, keys / "bank_a" / NODE_KEY):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert (keys / "bank_a" / "node-auth.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert not (keys / "bank_a" / "ca.key").exists()  # the CA's key stays with the operator
    cons = Consortium.load(keys / CONSORTIUM)
    assert cons.coordinator == "127.0.0.1:8000"
    assert Consortium.load(keys / "bank_b" / CONSORTIUM) == cons


def test_init_refuses_bad_addresses_names_and_existing_folders(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="HOST:PORT"):
        init_consortium(tmp_path / "c1", "link.example.org", ["a", "b"])
    with pytest.raises(KeyFileError, match="distinct"):
        init_consortium(tmp_path / "c2", "h:1", ["a", "a"])
    with pytest.raises(KeyFileError, match="plain names"):
        init_consortium(tmp_path / "c3", "h:1", ["a", "../b"])
    (tmp_path / "c4").mkdir()
    with pytest.raises(FileExistsError):
        init_consortium(tmp_path / "c4", "h:1", ["a", "b"])


def test_key_holders_are_resolved_from_the_consortium(tmp_path: Path) -> None:
    init_consortium(tmp_path / "k", "127.0.0.1:8000", ["bank_a", "bank_b"], ["kh"])
    keys = tmp_path / "k"
    cons = Consortium.load(keys / CONSORTIUM)
    assert list(cons.key_holders) == ["kh"] and "kh" not in cons.identities
    assert "kh" in cons.node_keys  # the coordinator registers its node like a party's
    pol = load_policy(_policy(tmp_path, keys, channels=["secagg", "he"], key_holders=["kh"]))
    assert pol.channels == ("secagg", "he")
    assert pol.key_holders == frozenset({cons.key_holders["kh"]})


def test_he_without_key_holders_and_unknown_key_holders_are_problems(tmp_path: Path) -> None:
    init_consortium(tmp_path / "k", "127.0.0.1:8000", ["bank_a", "bank_b"], ["kh"])
    keys = tmp_path / "k"
    with pytest.raises(PolicyFileError) as info:
        load_policy(_policy(tmp_path, keys, channels=["he"]))
    assert "'key_holders' is empty" in str(info.value)
    with pytest.raises(PolicyFileError) as info:
        load_policy(_policy(tmp_path, keys, channels=["he"], key_holders=["bank_b", "zed"]))
    assert "['bank_b', 'zed'] are not key holders" in str(info.value)


def test_a_key_holder_named_like_a_party_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not parties' names"):
        init_consortium(tmp_path / "k", "127.0.0.1:8000", ["bank_a", "bank_b"], ["bank_a"])
    init_consortium(tmp_path / "k2", "127.0.0.1:8000", ["bank_a", "bank_b"], ["kh"])
    path = tmp_path / "k2" / CONSORTIUM
    path.write_text(path.read_text().replace('[key_holders."kh"]', '[key_holders."bank_a"]'))
    with pytest.raises(KeyFileError, match="both as a party and as a key holder"):
        Consortium.load(path)
