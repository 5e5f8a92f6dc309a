"""Is the WMF original a saddle over the request's scope? (issue 22, ml-100k)

    python benchmarks/twosided_saddle.py --seed 101 --task interaction --work benchmarks/out/twosided_design

Loads the original twosided_check.py trained (under --work), draws the request of --task with
request seed --seed, and computes by Lanczos (scipy eigsh on exact float64 Hessian-vector
products of the model's training loss, all-entries term included) the smallest eigenvalues of
the Hessian of the full and of the retained loss over the scope's user and item rows (hop 0) and
over the scope's user rows alone, at the original. Block Gauss-Seidel on a symmetric system with
positive definite diagonal blocks contracts iff the matrix is positive definite (Ostrowski-Reich):
a negative eigenvalue means the tilted objective's stationary point at the original is a saddle
that the two-sided sweeps leave.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from twosided_check import _config, original_of  # noqa: E402 (after the sys.path line)

from recbole_unrank import pipeline  # noqa: E402 (after the sys.path line)
from recbole_unrank.adapters import get_adapter  # noqa: E402 (after the sys.path line)
from recbole_unrank.influence.blocks import scope_blocks  # noqa: E402 (after the sys.path line)
from recbole_unrank.methods.objective import Objective  # noqa: E402 (after the sys.path line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=101)
    p.add_argument("--task", default="interaction")
    p.add_argument("--work", default=os.path.join(HERE, "out", "twosided_design"))
    a = p.parse_args()
    path, _ = original_of("ml-100k", "WMF", {}, a.work)
    config = _config("ml-100k", "WMF", a.task, a.seed, {}, a.work)
    run, ckpt = pipeline.prepare_run(config, path, methods=["retrain"])
    run.prepare_original(ckpt, path)
    task = run._task()
    model = task.model.double()
    adapter = get_adapter(model)
    feat = task.train_ds.inter_feat
    users, items = feat[task.train_ds.uid_field], feat[task.train_ds.iid_field]
    target = torch.as_tensor(task.request_index, dtype=torch.long)
    keep = torch.ones(users.numel(), dtype=torch.bool)
    keep[target] = False
    um, im, _ = scope_blocks(users, items, keep, target, 0, adapter.n_users, adapter.n_items)
    neg = torch.zeros(users.numel(), 1, dtype=torch.long)  # WMF's loss reads no negative
    obj = Objective(adapter, users, items, neg, "training", int(task.train_batch_size))
    P, Q = adapter.user_tables()[0], adapter.item_tables()[0]
    uid, iid = um.nonzero().squeeze(1), im.nonzero().squeeze(1)
    d = P.shape[1]
    print(f"seed {a.seed} {a.task}: scope {uid.numel()} users, {iid.numel()} items, d={d}", flush=True)
    for rows_name, rows in (("full", torch.arange(users.numel())),):
        loss = obj.loss(rows, gram=True)
        gP, gQ = torch.autograd.grad(loss, [P, Q], create_graph=True)
        for part in ("users+items", "users"):
            n_u = uid.numel() * d
            n = n_u + (iid.numel() * d if part == "users+items" else 0)

            def hvp(v, gP=gP, gQ=gQ, n_u=n_u, part=part):
                v = torch.as_tensor(np.asarray(v).reshape(-1), dtype=torch.float64)
                vP = torch.zeros_like(P)
                vP[uid] = v[:n_u].view(-1, d)
                vQ = torch.zeros_like(Q)
                if part == "users+items":
                    vQ[iid] = v[n_u:].view(-1, d)
                hP, hQ = torch.autograd.grad((gP * vP).sum() + (gQ * vQ).sum(), [P, Q], retain_graph=True)
                out = [hP[uid].reshape(-1)] + ([hQ[iid].reshape(-1)] if part == "users+items" else [])
                return torch.cat(out).detach().numpy()

            op = LinearOperator((n, n), matvec=hvp, dtype=np.float64)
            high = eigsh(op, k=1, which="LA", tol=1e-3, return_eigenvectors=False, maxiter=3000)[0]
            # The smallest eigenvalue as the largest of (high I - H): Lanczos converges on extremes.
            shifted = LinearOperator((n, n), matvec=lambda v, op=op, high=high: high * np.asarray(v).reshape(-1) - op.matvec(v),
                                     dtype=np.float64)
            low = high - eigsh(shifted, k=1, which="LA", tol=1e-3, return_eigenvectors=False, maxiter=3000)[0]
            print(f"  {rows_name} loss, {part} rows ({n} parameters): smallest eigenvalue {low:.4g}; "
                  f"largest {high:.4g}", flush=True)


if __name__ == "__main__":
    main()
