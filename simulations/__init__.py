"""Local multi-party runs: bundled datasets, partitioners, the simulate() entry, baselines."""
