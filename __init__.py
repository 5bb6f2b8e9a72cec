"""fedsynth: federated differentially private synthetic tabular data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "simulate"]

if TYPE_CHECKING:
    from fedsynth.simulations.run import SimulationResult


def simulate(*args: Any, **kwargs: Any) -> SimulationResult:
    """Run a local multi-party job; see `fedsynth.simulations.run.simulate`."""
    from fedsynth.simulations.run import simulate as _simulate

    return _simulate(*args, **kwargs)
