"""HE channel benchmark: sizes and times of crypto.he operations, as a markdown table.

For each scheme (BFV default parameters, CKKS N=8192), vector length and number of parties:
the public context's bytes, the ciphertext bytes one party sends, one party's encryption time,
the coordinator's addition of all parties' chunks (parse + add + serialise), and the key
holder's decryption (parse + decrypt + range check). Medians of `--repeats` runs, each with a
fresh key pair; values are random within the scheme's bound.

    python benchmarks/he_ops.py [--repeats 3] [--schemes bfv ckks]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from fedsynth.crypto import he
from fedsynth.crypto.keys import Identity

LENGTHS = [4_096, 65_536]
PARTIES = [5, 20, 100]
OUT = Path(__file__).parent / "results" / "he_ops.md"


def _kib(n: float) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 2**20:,.1f} MiB"


def _run(params: he.Params, length: int, parties: int, round_id: int) -> dict[str, float]:
    identity = Identity.generate("key-holder")
    holder = he.KeyHolder("bench", identity.private, threshold=2, params=params)
    data, sig = holder.public_context()
    public = he.verify_public_context("bench", data, sig, identity.public, params)
    rng = np.random.default_rng()
    contributions, enc = [], []
    for _ in range(parties):
        if isinstance(params, he.BfvParams):
            v = rng.integers(-1000, 1000, length)
            t = time.perf_counter()
            contributions.append(he.encrypt_counts(public, v))
        else:
            x = rng.normal(0.0, 1.0, length)
            t = time.perf_counter()
            contributions.append(he.encrypt_reals(public, x))
        enc.append(time.perf_counter() - t)
    t = time.perf_counter()
    total = he.add_ciphertexts(public, contributions, length)
    add = time.perf_counter() - t
    t = time.perf_counter()
    holder.decrypt("bench", round_id, total, length, range(parties))
    dec = time.perf_counter() - t
    return {"context": len(data), "sent": sum(len(c) for c in contributions[0]),
            "encrypt": statistics.median(enc), "add": add, "decrypt": dec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--schemes", nargs="+", default=["bfv", "ckks"], choices=["bfv", "ckks"])
    args = ap.parse_args()
    bfv, ckks = he.BfvParams(), he.CkksParams()
    rows = ["| scheme | length | parties | public context | sent per party | encrypt per party "
            "(ms) | coordinator add (ms) | key-holder decrypt (ms) |",
            "|---|---|---|---|---|---|---|---|"]
    for scheme in args.schemes:
        params: he.Params = bfv if scheme == "bfv" else ckks
        for length in LENGTHS:
            for parties in PARTIES:
                runs = [_run(params, length, parties, r + 1) for r in range(args.repeats)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                row = (f"| {scheme} | {length:,} | {parties} | {_kib(med['context'])} | "
                       f"{_kib(med['sent'])} | {med['encrypt'] * 1e3:,.1f} | "
                       f"{med['add'] * 1e3:,.0f} | {med['decrypt'] * 1e3:,.1f} |")
                print(row, flush=True)
                rows.append(row)
    note = (f"\nMedians of {args.repeats} runs, fresh keys each run; Python "
            f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores. "
            f"BFV: N={bfv.poly_modulus_degree}, "
            f"p={bfv.plain_modulus} ({bfv.plain_modulus.bit_length()} bits), bound 2^31, "
            f"n_max 2^12. CKKS: N={ckks.poly_modulus_degree}, moduli "
            f"{'+'.join(map(str, ckks.coeff_mod_bit_sizes))} bits, scale 2^{ckks.scale_bits}. "
            "Encrypt is one party's whole vector; add and decrypt include parsing every chunk. "
            f"Load average at the end: {os.getloadavg()[0]:.1f} (other work inflates times).\n")
    text = "# HE channel operations (crypto.he, TenSEAL 0.3.18)\n\n" + "\n".join(rows) + "\n" + note
    print(note)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
