"""How low can max |cos| go for N unit vectors in R^d with other optimisers?

Independent probes (not ebv's code) used to judge the ebv-basis target of
<= 1.1 x Welch at N/d >= 5 (BENCHMARKS.md, ebv-basis):
  ap     Tropp et al.'s alternating projection (clip the Gram's off-diagonal
         to [-mu, mu], project onto rank-d PSD by eigh, renormalise)
  pnorm  Adam on the sphere minimising the p-norm of the off-diagonal Gram
         (a smooth max), p annealed from 8 to P over 60% of the steps
  kerdock  real mutually unbiased bases from a Kerdock set, built here
         independently of ebv (D = d must be a power of 4), then the pnorm
         run started from them plus 1e-3 noise: does a local method improve
         on the construction?
  kerdockpad  the Kerdock bases of R^K (K a power of 4, K < d) in the first K
         columns of R^d, plus Gaussian noise of std NOISE per entry, then
         the pnorm run: can a local method use the other d - K columns?
Prints the best max |cos| as a multiple of the Welch bound.

  python coherence_probe.py ap      N D ITERS MU_OVER_WELCH
  python coherence_probe.py pnorm   N D ITERS LR P
  python coherence_probe.py pnorm32 N D ITERS LR P                     # float32
  python coherence_probe.py kerdock N D ITERS LR P
  python coherence_probe.py kerdockpad N D ITERS LR P K NOISE   # float32
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


def gf_mul(a, b, t, poly):
    r = 0
    while b:
        if b & 1:
            r ^= a
        b >>= 1
        a <<= 1
        if (a >> t) & 1:
            a ^= poly
    return r


def gf_trace(z, t, poly):
    s = 0
    for _ in range(t):
        s ^= z
        z = gf_mul(z, z, t, poly)
    return s


def kerdock_vectors(n, d):
    """n vectors of the d/2 + 1 real MUBs in R^d (d = 2^m, m even)."""
    m = d.bit_length() - 1
    assert 1 << m == d and m % 2 == 0, "d must be a power of 4"
    t = m - 1
    # The first irreducible polynomial of degree t (no factor of degree <= t/2).
    def irreducible(p):
        for q in range(2, 1 << (t // 2 + 1)):
            r, dq = p, q.bit_length() - 1
            while r and r.bit_length() - 1 >= dq:
                r ^= q << (r.bit_length() - 1 - dq)
            if r == 0:
                return False
        return True
    poly = 0b11 if t == 1 else next(p for p in range(1 << t, 1 << (t + 1)) if p & 1 and irreducible(p))
    xs = np.arange(d)
    bits = (xs[:, None] >> np.arange(m)) & 1
    parity = (bits @ bits.T) & 1  # b.x mod 2
    rows = [np.eye(d)]
    for a in range(1 << t):
        if sum(r.shape[0] for r in rows) >= n:
            break
        c = a
        for _ in range(t - 1):
            c = gf_mul(c, c, t, poly)  # sqrt(a)
        lin = [gf_trace(gf_mul(c, 1 << i, t, poly), t, poly) for i in range(t)]
        A = np.zeros((m, m), dtype=np.int64)
        for i in range(t):
            for j in range(t):
                A[i, j] = gf_trace(gf_mul(a, gf_mul(1 << i, 1 << j, t, poly), t, poly), t, poly) ^ (lin[i] & lin[j])
            A[i, t] = A[t, i] = lin[i]
        q = np.zeros(d, dtype=np.int64)
        for i in range(m):
            for j in range(i + 1, m):
                if A[i, j]:
                    q ^= bits[:, i] & bits[:, j]
        rows.append((-1.0) ** (q[None, :] ^ parity) / math.sqrt(d))
    x = np.concatenate(rows)
    assert x.shape[0] >= n, f"R^{d} holds at most {d * (d // 2 + 1)} such vectors"
    return x[:n]


def pnorm(n, d, iters, lr, p_max, x0=None, noise=1e-3, dtype="float64"):
    import torch

    torch.set_num_threads(2)
    w = welch(n, d)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=getattr(torch, dtype))
    if x0 is not None:
        x = torch.from_numpy(x0).to(x.dtype) + noise * x
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
    elif mode == "kerdock":
        x0 = kerdock_vectors(n, d)
        g0 = x0 @ x0.T
        np.fill_diagonal(g0, 0)
        print(f"kerdock start: max |cos| {np.abs(g0).max():.6f} = {np.abs(g0).max() / welch(n, d):.3f}x welch")
        pnorm(n, d, iters, float(sys.argv[5]), float(sys.argv[6]), x0)
    elif mode == "kerdockpad":
        k, noise = int(sys.argv[7]), float(sys.argv[8])
        x0 = np.zeros((n, d))
        x0[:, :k] = kerdock_vectors(n, k)
        print(f"kerdock start in R^{k} of R^{d}: {1 / math.sqrt(k) / welch(n, d):.3f}x welch")
        pnorm(n, d, iters, float(sys.argv[5]), float(sys.argv[6]), x0, noise, "float32")
    elif mode == "pnorm32":
        pnorm(n, d, iters, float(sys.argv[5]), float(sys.argv[6]), dtype="float32")
    else:
        pnorm(n, d, iters, float(sys.argv[5]), float(sys.argv[6]))
