"""Import time of a 12-layer, 768-wide GPT-2 (124M parameters, tied head) through torch.export.

Prints, in one run: torch.export.export + run_decompositions alone (the baseline: what any
torch.export-based importer pays), and modelcut's whole `import_torch` (the same export, then
the mapping onto the op registry, constant folding and weight copies), with the ratio.
Target: import_torch <= 15 s. The model is the hand-written GPT-2 of the tests
(tests/autodiff/torch_zoo.py), built with random init (no downloads).
Run: python benchmarks/import_gpt2.py [--seq 128] [--layers 12] [--width 768]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "autodiff"))

TARGET_SECONDS = 15.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    import torch
    from torch_zoo import GPT2LMHeadModel
    from autodiff.torch_import import export_program, import_torch

    torch.manual_seed(0)
    model = GPT2LMHeadModel(args.vocab, args.width, args.layers, args.heads, 1024)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq))
    params = sum(p.numel() for p in model.parameters())
    export_program(model, (tokens,))                      # warm-up: torch's lazy imports

    start = time.perf_counter()
    export_program(model, (tokens,))
    baseline = time.perf_counter() - start
    start = time.perf_counter()
    imported = import_torch(model, (tokens,))
    ours = time.perf_counter() - start

    print(f"GPT-2 {args.layers} layers x {args.width}, {params / 1e6:.1f}M parameters, "
          f"tokens {args.batch}x{args.seq}: {len(imported.graph):,} nodes, "
          f"{imported.num_parameters / 1e6:.1f}M imported parameters, "
          f"{len(imported.opaque)} opaque ops")
    print(f"torch.export + run_decompositions (baseline): {baseline:6.2f} s")
    print(f"modelcut import_torch (export + mapping):      {ours:6.2f} s "
          f"({ours / baseline:.2f}x the baseline; mapping {ours - baseline:.2f} s)")
    ok = ours <= TARGET_SECONDS
    print(f"target <= {TARGET_SECONDS:.0f} s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
