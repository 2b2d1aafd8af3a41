"""What each Triton model instance pays at start-up to import its model code.

Every python-backend instance is a fresh process that imports ``mapper.triton.backend``.
Each line is the median of fresh interpreters (``python -c``), side by side with:

- the floor: ``numpy`` and ``cv2``, which the model code needs to run at all;
- the old cost: the backend plus the map library (scikit-learn, scipy), which every
  instance imported before ``mapper/__init__`` became lazy.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

CASES = {
    "floor: numpy + cv2": "import numpy, cv2",
    "mapper.triton.backend (now)": "import mapper.triton.backend",
    "backend + map library (before)": "import mapper.triton.backend, mapper.core.hub, mapper.core.mapfile",
}


def seconds(code: str, repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    empty = seconds("pass")
    results = {name: seconds(code) - empty for name, code in CASES.items()}
    floor = results["floor: numpy + cv2"]
    print(f"import time per Triton model instance (median of 7, minus {empty * 1000:.0f} ms start-up)")
    for name, s in results.items():
        print(f"  {name:<34} {s * 1000:7.0f} ms   {s / floor:5.2f}x floor")


if __name__ == "__main__":
    main()
