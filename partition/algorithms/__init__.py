"""The registry of partitioning algorithms: name -> function(Problem) -> AlgorithmResult.

One explicit dict, filled here and nowhere else (no registration by import side effects).
"""
from __future__ import annotations

from partition.algorithms.base import Algorithm, AlgorithmResult
from partition.algorithms.baselines import contiguous, layers, random_placement, round_robin
from partition.algorithms.pipeline_dp import pipeline_dp
from partition.algorithms.auto import auto
from partition.algorithms.ilp import ilp
from partition.algorithms.mincut import mincut
from partition.algorithms.multilevel import multilevel
from partition.algorithms.peers import metis, mtkahypar

ALGORITHMS: dict[str, Algorithm] = {
    "round_robin": round_robin,
    "random": random_placement,
    "contiguous": contiguous,
    "layers": layers,
    "pipeline_dp": pipeline_dp,
    "multilevel": multilevel,
    "mincut": mincut,
    "ilp": ilp,
    "metis": metis,
    "mtkahypar": mtkahypar,
    "auto": auto,
}

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmResult"]
