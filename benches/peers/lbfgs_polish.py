"""Independent probe: polish an N x d basis with L-BFGS on smooth stand-ins for max |cos|.

Session 20 asked whether any local method gets the paper's (1000, 100) below
1.1 x Welch from ebv's best start (BENCHMARKS.md, ebv-basis). Float64 torch,
one thread; each phase runs torch.optim.LBFGS (strong-Wolfe line search,
history 20) on the row-normalised matrix and keeps the best matrix seen:
  ["pn", p, iters]     m * (sum over pairs (|c|/m)^p)^(1/p), m = current max |c|
  ["hinge", tau, iters] sum over pairs max(|c| - tau, 0)^2
  ["eq", t, iters]     sum over pairs (c^2 - t^2)^2
Prints max |cos| (f64) and its ratio to the Welch bound after each phase and
writes the best matrix as float32 .npy.

  python lbfgs_polish.py --init start.npy --out polished.npy \
      --phases '[["pn",64,100],["pn",2048,100]]'
"""
import argparse
import json
import math
import time

import numpy as np
import torch

torch.set_num_threads(1)
ap = argparse.ArgumentParser()
ap.add_argument("--init", required=True, help=".npy float32 [N, d]")
ap.add_argument("--phases", required=True, help="JSON list of [kind, parameter, iterations]")
ap.add_argument("--out", required=True)
a = ap.parse_args()

X = torch.tensor(np.load(a.init), dtype=torch.float64)
N, d = X.shape
W = math.sqrt((N - d) / (d * (N - 1))) if N > d else 0.0
X = X / X.norm(dim=1, keepdim=True)
X.requires_grad_(True)
iu = torch.triu_indices(N, N, 1)


def coherence(X):
    with torch.no_grad():
        Y = X / X.norm(dim=1, keepdim=True)
        G = (Y @ Y.T).abs()
        G.fill_diagonal_(0)
        return G.max().item()


best = coherence(X)
best_x = X.detach().clone()
print("start %.6f (%.4f x Welch)" % (best, best / W), flush=True)
t0 = time.time()
for kind, par, iters in json.loads(a.phases):
    opt = torch.optim.LBFGS([X], lr=1, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe",
                            tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        Y = X / X.norm(dim=1, keepdim=True)
        C = (Y @ Y.T)[iu[0], iu[1]]
        A = C.abs()
        if kind == "pn":
            m = A.max().detach()
            L = m * ((A / m) ** par).sum() ** (1 / par)
        elif kind == "hinge":
            L = (torch.relu(A - par) ** 2).sum()
        elif kind == "eq":
            L = ((C * C - par * par) ** 2).sum()
        else:
            raise SystemExit("unknown phase kind %r" % kind)
        L.backward()
        return L

    opt.step(closure)
    with torch.no_grad():
        X /= X.norm(dim=1, keepdim=True)
    c = coherence(X)
    if c < best:
        best, best_x = c, X.detach().clone()
    print("%s %g x%d: %.6f (%.4f x Welch), best %.6f, %.0f s"
          % (kind, par, iters, c, c / W, best, time.time() - t0), flush=True)
np.save(a.out, best_x.numpy().astype(np.float32))
print("best %.6f (%.4f x Welch)" % (best, best / W))
