"""The result of `partition()`: which device runs each node, and what that placement costs."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from partition.errors import PlacementError
from partition.metrics import PlacementMetrics


@dataclass(frozen=True, eq=False)
class Placement:
    """A placement of a forward graph on a cluster with its SPEC section 2 metrics. `optimal`
    and `bound` come from the algorithm (None when unknown or when the rebalancer moved nodes);
    `relaxed_by` names the node that forced relaxed load caps, if any."""

    assignment: np.ndarray
    node_names: tuple[str, ...]
    device_names: tuple[str, ...]
    algorithm: str
    seconds: float
    metrics: PlacementMetrics
    optimal: bool | None = None
    bound: float | None = None
    relaxed_by: str | None = None
    info: dict = field(default_factory=dict)

    @cached_property
    def _position(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.node_names)}

    def device_of(self, name: str) -> str:
        """Name of the device that runs node `name`."""
        try:
            return self.device_names[self.assignment[self._position[name]]]
        except KeyError:
            raise PlacementError(f"placement: no node named {name!r}") from None

    def to_mapping(self) -> dict[str, str]:
        """Node name -> device name, for every node."""
        names = self.device_names
        return {node: names[d] for node, d in zip(self.node_names, self.assignment.tolist())}

    def to_dict(self) -> dict:
        return {"algorithm": self.algorithm, "seconds": self.seconds, "optimal": self.optimal,
                "bound": self.bound, "relaxed_by": self.relaxed_by,
                "devices": list(self.device_names), "metrics": self.metrics.to_dict(),
                "info": self.info, "assignment": self.to_mapping()}
