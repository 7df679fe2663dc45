"""partition: split a cost-annotated graph across devices with the fewest bytes crossing.
Knows nothing of Ray: clusters, the SPEC cost model and metrics, the algorithms (one registry,
one signature) and an event-driven step simulator."""
from partition.api import partition
from partition.cluster import Cluster, Device, Link, heterogeneous, hierarchical, uniform
from partition.errors import PlacementError
from partition.metrics import PlacementMetrics, compute_metrics
from partition.placement import Placement
from partition.simulate import SimulationResult, simulate

__all__ = [
    "partition", "Cluster", "Device", "Link", "heterogeneous", "hierarchical", "uniform",
    "PlacementError", "PlacementMetrics", "compute_metrics", "Placement", "SimulationResult",
    "simulate",
]
