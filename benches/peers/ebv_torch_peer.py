"""PyTorch re-statement of the paper's generator (Generate_EBV.py, CVPR 2023),
used as the benchmark peer of `ebv-basis generate`.

Same loop as the official script: rows ~ N(0,1) normalised; each step the
rows are renormalised, |B[s:e] @ B.T| - one_hot is formed per slice of 130
rows, mx = max(threshold, max of those), loss = relu(m - threshold).sum() is
backpropagated per slice (gradients accumulate), and once all slices are done
the loop stops if mx <= threshold + 1e-4, else takes one plain SGD step.
float32 on CPU. Prints one JSON line: steps, reached, max |cos|, seconds.
Adds only a wall-clock limit (--time-limit) so benchmarks end.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--alpha", type=float, required=True)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--slice", type=int, default=130)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--time-limit", type=float, default=float("inf"))
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    n, thr = a.classes, a.alpha
    basis = torch.nn.Parameter(F.normalize(torch.randn(n, a.dim)))
    opt = torch.optim.SGD([basis], lr=a.lr)
    t0 = time.perf_counter()
    best, reached, step, mx = float("inf"), False, 0, None
    for step in range(a.steps + 1):
        basis.data.copy_(F.normalize(basis.data))
        mx = thr
        for start in range(0, n, a.slice):
            end = min(start + a.slice, n)
            m = (basis[start:end] @ basis.T).abs() - F.one_hot(
                torch.arange(start, end), n
            )
            mx = max(mx, m.max().item())
            loss = F.relu(m - thr).sum()
            loss.backward()
        best = min(best, mx)
        if mx <= thr + 1e-4:
            reached = True
            break
        if time.perf_counter() - t0 > a.time_limit or step == a.steps:
            break
        opt.step()
        opt.zero_grad()
    print(json.dumps({
        "classes": n, "dim": a.dim, "alpha": thr, "lr": a.lr,
        "steps": step, "reached": reached, "max_abs_cos": mx,
        "best_max_abs_cos": best, "seconds": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
