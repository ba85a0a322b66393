"""Spread of a basis: max and root-mean-square off-diagonal |cos| against the Welch bound, and
the range of the frame operator's eigenvalues (N/d for every one in a tight frame).

  python coherence_spread.py A.npy [B.npy ...]
"""
import sys, numpy as np
for f in sys.argv[1:]:
    x = np.load(f).astype(np.float64); x /= np.linalg.norm(x, axis=1, keepdims=True)
    n, d = x.shape; W = np.sqrt((n - d) / (d * (n - 1)))
    g = x @ x.T; off = g[~np.eye(n, dtype=bool)]
    e = np.linalg.eigvalsh(x.T @ x)
    print("%s: max %.4f x W, rms %.4f x W, frame eigenvalues %.2f-%.2f" % (f, np.abs(off).max() / W, np.sqrt((off**2).mean()) / W, e[0], e[-1]))
