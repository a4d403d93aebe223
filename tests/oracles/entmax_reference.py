"""Test oracle for tests/entmax_test.cpp: the PyPI `entmax` package (never a runtime dependency).

usage: entmax_reference.py IN OUT ROWS N ALPHA...
IN holds float64 z [ROWS, N] then w [ROWS, N]. For each ALPHA, OUT receives float64
p = entmax_alpha(z) [ROWS, N] and d(sum(p * w))/dz [ROWS, N]: entmax15 for 1.5, sparsemax
for 2, entmax_bisect otherwise.
"""
import sys

try:
    import numpy as np
    import torch
    from entmax import entmax15, entmax_bisect, sparsemax
except ImportError as e:
    sys.exit(f"entmax_reference.py: missing python module ({e}); pip install numpy entmax")

src, dst, rows, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
alphas = [float(a) for a in sys.argv[5:]]
z_np, w_np = np.fromfile(src, dtype=np.float64).reshape(2, rows, n)
w = torch.from_numpy(w_np)
out = []
for alpha in alphas:
    z = torch.from_numpy(z_np.copy()).requires_grad_(True)
    if alpha == 1.5:
        p = entmax15(z, dim=-1)
    elif alpha == 2.0:
        p = sparsemax(z, dim=-1)
    else:
        p = entmax_bisect(z, alpha=alpha, dim=-1, n_iter=100)
    (p * w).sum().backward()
    out += [p.detach().numpy(), z.grad.numpy()]
np.concatenate(out).astype(np.float64).tofile(dst)
