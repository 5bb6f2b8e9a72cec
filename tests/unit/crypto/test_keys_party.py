"""`fedsynth keys party`: a party makes its own secrets and hands out only the public halves."""

from __future__ import annotations

import stat
import subprocess
import sys
import tomllib
from pathlib import Path

from fedsynth.crypto.keyfiles import IDENTITY_KEY, NODE_KEY, read_identity
from fedsynth.crypto.keys import public_identity


def test_keys_party_prints_a_consortium_entry_matching_its_secret_keys(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "fedsynth.cli", "keys", "party", "--name",
                        "bank_d", "--out", "mine"], cwd=tmp_path, text=True,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    entry = tomllib.loads(r.stdout)["parties"]["bank_d"]
    folder = tmp_path / "mine"
    for secret in (IDENTITY_KEY, NODE_KEY):
        assert stat.S_IMODE((folder / secret).stat().st_mode) == 0o600
    import base64

    assert base64.b64decode(entry["identity"]) == public_identity(
        read_identity(folder / IDENTITY_KEY))
    assert entry["node_key"] == (folder / "node-auth.pub").read_text().strip()
    assert "-----BEGIN" not in r.stdout  # nothing secret on standard output
    again = subprocess.run([sys.executable, "-m", "fedsynth.cli", "keys", "party", "--name",
                            "bank_d", "--out", "mine"], cwd=tmp_path, text=True,
                           capture_output=True, timeout=120)
    assert again.returncode == 3 and "new folder" in again.stderr
