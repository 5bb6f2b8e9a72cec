"""The party role: data loading and validation, statistics, noise, masking, and its own ledger."""
