"""Role-free cryptographic and privacy primitives: secure aggregation, Shamir, noise, accounting."""
