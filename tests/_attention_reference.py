"""Float64 NumPy transcription of additive attention (Bahdanau et al. 2015), the core tests' reference.

e_i = w_a . tanh(q W_q + h_i W_k + b);  alpha = softmax over valid i;  c = sum_i alpha_i v_i
"""

import numpy as np


def reference_attention(q, h, v, w_q, w_k, w_a, bias=None, mask=None, fully_masked="zero"):
    """Loops over every leading index and query; returns float64 (context, weights)."""
    q, h, v = (np.asarray(x, np.float64) for x in (q, h, v))
    w_q, w_k, w_a = (np.asarray(x, np.float64) for x in (w_q, w_k, w_a))
    b = np.zeros(w_a.shape) if bias is None else np.asarray(bias, np.float64)
    batch = np.broadcast_shapes(q.shape[:-2], h.shape[:-2], v.shape[:-2])
    m, n = q.shape[-2], h.shape[-2]
    q = np.broadcast_to(q, batch + q.shape[-2:])
    h = np.broadcast_to(h, batch + h.shape[-2:])
    v = np.broadcast_to(v, batch + v.shape[-2:])
    mask = np.ones(batch + (m, n), bool) if mask is None else np.broadcast_to(mask, batch + (m, n))
    weights = np.zeros(batch + (m, n))
    context = np.zeros(batch + (m, v.shape[-1]))
    for idx in np.ndindex(*batch):
        for i in range(m):
            e = np.array([w_a @ np.tanh(q[idx][i] @ w_q + h[idx][j] @ w_k + b) for j in range(n)])
            valid = mask[idx][i]
            if not valid.any():
                fill = {"zero": 0.0, "uniform": 1.0 / n, "nan": np.nan}[fully_masked]
                weights[idx][i] = fill
                context[idx][i] = v[idx].mean(0) if fully_masked == "uniform" else fill
                continue
            ex = np.where(valid, np.exp(e - e[valid].max()), 0.0)
            weights[idx][i] = ex / ex.sum()
            context[idx][i] = weights[idx][i] @ v[idx]
    return context, weights
