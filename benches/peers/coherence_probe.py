"""How low can max |cos| go for N unit vectors in R^d with other optimisers?

Independent probes (not ebv's code) used to judge the ebv-basis target of
<= 1.1 x Welch at N/d >= 5 (BENCHMARKS.md, ebv-basis):
  ap     Tropp et al.'s alternating projection (clip the Gram's off-diagonal
         to [-mu, mu], project onto rank-d PSD by eigh, renormalise)
  pnorm  Adam on the sphere minimising the p-norm of the off-diagonal Gram
         (a smooth max), p annealed from 8 to P over 60% of the steps
Prints the best max |cos| as a multiple of the Welch bound.

  python coherence_probe.py ap    N D ITERS MU_OVER_WELCH
  python coherence_probe.py pnorm N D ITERS LR P
"""
import math
import sys
import time

import numpy as np


def welch(n, d):
    return math.sqrt((n - d) / (d * (n - 1)))


def ap(n, d, iters, ratio):
    w = welch(n, d)
    mu = ratio * w
    rng = np.random.default_rng(0)
    x = rng.standard_normal((d, n))
    x /= np.linalg.norm(x, axis=0)
    best, t0 = 9.0, time.time()
    for it in range(iters):
        g = x.T @ x
        h = np.clip(g, -mu, mu)
        np.fill_diagonal(h, 1.0)
        vals, vecs = np.linalg.eigh(h)
        vals, vecs = vals[-d:], vecs[:, -d:]
        x = (vecs * np.sqrt(np.maximum(vals, 0))).T
        x /= np.linalg.norm(x, axis=0)
        g = x.T @ x
        np.fill_diagonal(g, 0)
        best = min(best, np.abs(g).max())
        if it % 50 == 0 or it == iters - 1:
            print(f"it {it} best {best / w:.3f}x welch t {time.time() - t0:.0f}s", flush=True)


def pnorm(n, d, iters, lr, p_max):
    import torch

    torch.set_num_threads(2)
    w = welch(n, d)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = (x / x.norm(dim=1, keepdim=True)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    off = ~torch.eye(n, dtype=torch.bool)
    best, t0 = 9.0, time.time()
    for it in range(iters):
        p = 8 + (p_max - 8) * min(1.0, it / (0.6 * iters))
        u = x / x.norm(dim=1, keepdim=True)
        c = (u @ u.T)[off].abs()
        m = c.max().detach()
        loss = m * ((c / m) ** p).mean() ** (1 / p)
        opt.zero_grad()
        loss.backward()
        opt.step()
        best = min(best, m.item())
        if it % 500 == 0 or it == iters - 1:
            print(f"it {it} p {p:.0f} best {best / w:.3f}x welch t {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    mode, n, d, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if mode == "ap":
        ap(n, d, iters, float(sys.argv[5]))
    else:
        pnorm(n, d, iters, float(sys.argv[5]), float(sys.argv[6]))
