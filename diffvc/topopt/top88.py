"""A line-by-line numpy/scipy port of the 88-line MATLAB code ``top88`` (Andreassen, Clausen,
Schevenels, Lazarov, Sigmund, "Efficient topology optimization in MATLAB using 88 lines of code",
Struct. Multidisc. Optim. 43, 2011), written the way its authors write it (and the way the DTU
group's own Python port ``topopt.py`` does: ``scipy.sparse.coo_matrix`` assembly and
``scipy.sparse.linalg.spsolve``).

It is the reference that :mod:`diffvc.topopt` is tested and benchmarked against; it is not used
by the library itself. The MBB half-beam: nodes numbered column-wise from the top-left corner,
the left edge's x-dofs and the bottom-right node's y-dof fixed, a unit downward load at the
top-left node; ``E0 = 1``, ``Emin = 1e-9``, ``nu = 0.3``; optimality criteria with move 0.2 and
bisection to ``(l2 - l1) / (l1 + l2) <= 1e-3``; stop when ``max |x_new - x| <= 0.01``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla


def lk(nu: float = 0.3) -> np.ndarray:
    """top88's 8x8 bilinear plane-stress element stiffness (unit square, unit thickness, E = 1)."""
    A11 = np.array([[12, 3, -6, -3], [3, 12, 3, 0], [-6, 3, 12, -3], [-3, 0, -3, 12]], dtype=float)
    A12 = np.array([[-6, -3, 0, 3], [-3, -6, -3, -6], [0, -3, -6, 3], [3, -6, 3, -6]], dtype=float)
    B11 = np.array([[-4, 3, -2, 9], [3, -4, -9, 4], [-2, -9, -4, -3], [9, 4, -3, -4]], dtype=float)
    B12 = np.array([[2, -3, 4, -9], [-3, 2, 9, -2], [4, 9, 2, 3], [-9, -2, 3, 2]], dtype=float)
    return 1.0 / (1 - nu**2) / 24 * (np.block([[A11, A12], [A12.T, A11]]) + nu * np.block([[B11, B12], [B12.T, B11]]))


def top88(nelx: int, nely: int, volfrac: float, penal: float, rmin: float, ft: int,
          max_iter: int = 2000, verbose: bool = False) -> dict:
    """Run top88 on the MBB half-beam. Returns ``{"x": (nely, nelx) xPhys, "c": [compliance per
    iteration], "change": [...], "iterations": n, "seconds_per_iter": [...]}``."""
    import time

    E0, Emin, nu = 1.0, 1e-9, 0.3
    KE = lk(nu)
    nodenrs = np.arange(1, (1 + nelx) * (1 + nely) + 1).reshape(1 + nelx, 1 + nely).T  # column-major
    edofVec = (2 * nodenrs[:-1, :-1] + 1).T.reshape(-1)  # MATLAB reshape (column-major)
    edofMat = edofVec[:, None] + np.array([0, 1, 2 * nely + 2, 2 * nely + 3, 2 * nely + 0, 2 * nely + 1, -2, -1])
    edofMat = edofMat - 1  # zero-based
    iK = np.kron(edofMat, np.ones((8, 1), dtype=int)).reshape(-1)
    jK = np.kron(edofMat, np.ones((1, 8), dtype=int)).reshape(-1)
    ndof = 2 * (nely + 1) * (nelx + 1)
    F = np.zeros(ndof)
    F[1] = -1.0
    U = np.zeros(ndof)
    fixeddofs = np.union1d(np.arange(0, 2 * (nely + 1), 2), np.array([ndof - 1]))
    freedofs = np.setdiff1d(np.arange(ndof), fixeddofs)
    # filter
    r = int(np.ceil(rmin)) - 1
    iH, jH, sH = [], [], []
    for i1 in range(nelx):
        for j1 in range(nely):
            e1 = i1 * nely + j1
            for i2 in range(max(i1 - r, 0), min(i1 + r + 1, nelx)):
                for j2 in range(max(j1 - r, 0), min(j1 + r + 1, nely)):
                    e2 = i2 * nely + j2
                    iH.append(e1)
                    jH.append(e2)
                    sH.append(max(0.0, rmin - np.sqrt((i1 - i2) ** 2 + (j1 - j2) ** 2)))
    H = sp.coo_matrix((sH, (iH, jH)), shape=(nelx * nely, nelx * nely)).tocsc()
    Hs = np.asarray(H.sum(1)).reshape(-1)
    # elements are flattened column-major (MATLAB x(:)): index e = elx * nely + ely
    x = np.full(nely * nelx, volfrac)
    xPhys = x.copy()
    loop, change = 0, 1.0
    cs, changes, secs = [], [], []
    while change > 0.01 and loop < max_iter:
        t0 = time.perf_counter()
        loop += 1
        sK = (KE.reshape(-1)[:, None] * (Emin + xPhys ** penal * (E0 - Emin))[None, :]).T.reshape(-1)
        K = sp.coo_matrix((sK, (iK, jK)), shape=(ndof, ndof)).tocsc()
        K = (K + K.T) / 2
        K = K[freedofs, :][:, freedofs]
        U[freedofs] = spla.spsolve(K, F[freedofs])
        Ue = U[edofMat]
        ce = np.sum((Ue @ KE) * Ue, axis=1)
        c = np.sum((Emin + xPhys ** penal * (E0 - Emin)) * ce)
        dc = -penal * (E0 - Emin) * xPhys ** (penal - 1) * ce
        dv = np.ones(nely * nelx)
        if ft == 1:
            dc = np.asarray(H @ (x * dc)) / Hs / np.maximum(1e-3, x)
        elif ft == 2:
            dc = np.asarray(H @ (dc / Hs))
            dv = np.asarray(H @ (dv / Hs))
        l1, l2, move = 0.0, 1e9, 0.2
        while (l2 - l1) / (l1 + l2) > 1e-3:
            lmid = 0.5 * (l2 + l1)
            xnew = np.maximum(0.0, np.maximum(x - move, np.minimum(1.0, np.minimum(x + move, x * np.sqrt(-dc / dv / lmid)))))
            if ft == 1:
                xPhys = xnew
            elif ft == 2:
                xPhys = np.asarray(H @ xnew) / Hs
            if xPhys.sum() > volfrac * nelx * nely:
                l1 = lmid
            else:
                l2 = lmid
        change = float(np.max(np.abs(xnew - x)))
        x = xnew
        secs.append(time.perf_counter() - t0)
        cs.append(float(c))
        changes.append(change)
        if verbose:
            print(f" It.:{loop:5d} Obj.:{c:11.4f} Vol.:{xPhys.mean():7.3f} ch.:{change:7.3f}")
    return {"x": xPhys.reshape(nelx, nely).T, "c": cs, "change": changes, "iterations": loop, "seconds_per_iter": secs}
