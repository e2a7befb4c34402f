"""Compare scene.npz files array by array (refactor check: same seed, same settings -> same arrays).

    python benchmarks/compare_scenes.py NEW.npz REFERENCE.npz [--atol 0] [--rtol 0]
    python benchmarks/compare_scenes.py NEW_DIR REFERENCE_DIR   (every *.npz present in both)

Prints one line per array (equal / max abs difference / missing) and exits 1 when any array differs
beyond the tolerance or is missing on one side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def compare(new: Path, ref: Path, atol: float, rtol: float) -> bool:
    """True when every array of `ref` is in `new` and equal (NaN == NaN) within the tolerance."""
    with np.load(new, allow_pickle=False) as a, np.load(ref, allow_pickle=False) as b:
        ok = True
        for key in sorted(set(a.files) | set(b.files)):
            if key not in a.files or key not in b.files:
                print(f"  {key}: only in {'reference' if key in b.files else 'new'}")
                ok = False
                continue
            x, y = a[key], b[key]
            if x.shape != y.shape or x.dtype != y.dtype:
                print(f"  {key}: shape/dtype {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
                ok = False
                continue
            if np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                continue
            if x.dtype.kind in "fc":
                diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
                finite = np.isfinite(diff)
                worst = float(diff[finite].max()) if finite.any() else float("nan")
                close = np.allclose(x, y, atol=atol, rtol=rtol, equal_nan=True)
                print(f"  {key}: max |diff| {worst:.3g}, {int((diff[finite] > 0).sum())} of {diff.size} differ"
                      f"{' (within tolerance)' if close else ''}")
                ok &= bool(close)
            else:
                print(f"  {key}: {int((x != y).sum())} of {x.size} entries differ")
                ok = False
        return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("new", type=Path)
    parser.add_argument("reference", type=Path)
    parser.add_argument("--atol", type=float, default=0.0)
    parser.add_argument("--rtol", type=float, default=0.0)
    args = parser.parse_args()
    pairs = ([(args.new / f.name, f) for f in sorted(args.reference.glob("*.npz")) if (args.new / f.name).exists()]
             if args.reference.is_dir() else [(args.new, args.reference)])
    all_ok = bool(pairs)
    for new, ref in pairs:
        ok = compare(new, ref, args.atol, args.rtol)
        print(f"{new.name}: {'identical' if ok else 'DIFFERENT'}")
        all_ok &= ok
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
