"""Fits the coefficients of the fp32 tanh in lstm_cell_cpu.h (cell_tanh<float>).

Below |x| = 0.9, tanh(x) = x + x z Q(z) with z = x^2 and Q of degree 6: a least-squares
fit of the relative error on Chebyshev-spaced points, reweighted (Lawson) toward the
minimax fit. Prints the coefficients as float32 and the worst error, in ulp against
float64, of the polynomial and of the other branch, 1 - 2 / (1 + exp(2|x|)), both
evaluated in float32. Run: python csrc/cpu/fit_tanh.py
"""
import numpy as np

THRESHOLD, DEGREE = 0.9, 7   # P(z) = 1 + c1 z + ... + c7 z^7


def fit() -> np.ndarray:
    x = np.cos(np.linspace(0.0, np.pi / 2, 6000)) * THRESHOLD
    x = x[x > 1e-4]
    basis = np.vander(x * x, DEGREE + 1, increasing=True)
    target = np.tanh(x) / x
    weight = np.ones_like(x)
    for _ in range(40):
        scale = weight / target
        coef, *_ = np.linalg.lstsq(basis * scale[:, None], target * scale, rcond=None)
        error = np.abs(basis @ coef - target) / target
        weight = weight * np.sqrt(error / error.max()) + 1e-12
    coef = coef.astype(np.float32)
    coef[0] = 1.0
    return coef


def ulp_error(x: np.ndarray, y: np.ndarray) -> float:
    exact = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return float((np.abs(y - exact) / ulp).max())


def main() -> None:
    coef = fit()
    x = np.linspace(-THRESHOLD, THRESHOLD, 400001).astype(np.float32)
    x = x[x != 0]
    z = x * x
    q = coef[-1]
    for c in coef[-2:0:-1]:
        q = (q * z + c).astype(np.float32)
    small = (x + (x * z).astype(np.float32) * q).astype(np.float32)
    a = np.linspace(THRESHOLD, 10.0, 400001).astype(np.float32)
    large = np.float32(1) - np.float32(2) / (np.float32(1) + np.exp(np.float32(2) * a))
    print("coefficients c1..c7:", ", ".join(f"{c:.9g}f" for c in coef[1:]))
    print(f"max error: {ulp_error(x, small):.2f} ulp below {THRESHOLD}, "
          f"{ulp_error(a, large.astype(np.float32)):.2f} ulp above")


if __name__ == "__main__":
    main()
