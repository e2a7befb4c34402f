"""Speed of the St4R network per image pair on this machine (CPU), forward and forward+backward.

    python benchmarks/model_speed.py [--threads 1 2] [--repeats 5]

Writes benchmarks/results/model_speed.json: for each (config, size, batch, threads) the median seconds
per pair of a no-grad eval forward and of a training forward+backward, the parameter count, and the
1-minute load average when measured (the machine is shared, so numbers under load are upper bounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from st4r_cli.model.config import ST4R_TINY
from st4r_cli.model.net import St4rNet

OUT = Path(__file__).resolve().parent / "results" / "model_speed.json"


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model: St4rNet, size_hw: tuple[int, int], batch: int, repeats: int) -> dict[str, float]:
    img1 = torch.rand(batch, 3, *size_hw) * 2 - 1
    img2 = torch.rand(batch, 3, *size_hw) * 2 - 1

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(img1, img2)

    def forward_backward() -> None:
        model.train()
        res1, res2 = model(img1, img2)
        (res1["pts3d"].mean() + res1["conf"].mean() + res2["pts3d_in_other_view"].mean()
         + res2["conf"].mean()).backward()
        model.zero_grad(set_to_none=True)

    return {"forward_s_per_pair": _median_time(forward, repeats) / batch,
            "forward_backward_s_per_pair": _median_time(forward_backward, repeats) / batch}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = St4rNet(ST4R_TINY)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size_hw in ((192, 256), (144, 256)):
            for batch in (1, 4):
                row = {"config": ST4R_TINY.name, "size_hw": list(size_hw), "batch": batch, "threads": threads,
                       **measure(model, size_hw, batch, args.repeats), "load_avg_1min": os.getloadavg()[0]}
                rows.append(row)
                print(json.dumps(row))
    result = {"machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "torch": torch.__version__},
              "params": model.num_parameters, "results": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
