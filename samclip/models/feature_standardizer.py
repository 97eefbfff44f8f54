"""PHI-S (Ranzinger et al. 2024): standardize teacher features by a Hadamard-rotated PCA and one scale."""

from __future__ import annotations

import torch
from torch import nn


def _paley_12() -> torch.Tensor:
    """The order-12 Hadamard matrix of Paley's first construction (q = 11, a prime ≡ 3 mod 4)."""
    q = 11
    residues = {(i * i) % q for i in range(1, q)}
    legendre = [0] + [1 if a in residues else -1 for a in range(1, q)]
    jacobsthal = torch.tensor(
        [[legendre[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64
    )
    skew = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    skew[0, 1:] = 1.0
    skew[1:, 0] = -1.0
    skew[1:, 1:] = jacobsthal
    return torch.eye(q + 1, dtype=torch.float64) + skew


def _sylvester(dim: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < dim:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def hadamard(dim: int) -> torch.Tensor:
    """The normalised (orthogonal) Hadamard matrix [dim, dim] in float64, entries ±1/sqrt(dim).

    Built for dim = 2^k (Sylvester) and dim = 12·2^k (Paley's order 12 ⊗ Sylvester 2^k), which covers DINOv2's
    384, 768, 1024 and 1536.
    """
    if _is_power_of_two(dim):
        h = _sylvester(dim)
    elif dim % 12 == 0 and _is_power_of_two(dim // 12):
        h = torch.kron(_paley_12(), _sylvester(dim // 12))
    else:
        raise ValueError(
            f"no Hadamard matrix built for size {dim}: supported sizes are 2^k and 12·2^k (k >= 0)"
        )
    return h / dim**0.5


class FeatureStandardizer(nn.Module):
    """PHI-S: x -> H·Uᵀ·(x − μ) / σ, with Σ = U Λ Uᵀ the teacher features' covariance, H a normalised Hadamard
    matrix and σ² = tr(Σ)/D: after the rotation every channel has the same variance (1), and the map is an
    isometry up to one scale, so the teacher's geometry is kept (unlike per-channel whitening, which stretches
    each channel by its own factor)."""

    mean: torch.Tensor
    rotation: torch.Tensor
    scale: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("rotation", torch.eye(dim))  # H·Uᵀ
        self.register_buffer("scale", torch.ones(()))  # σ
        self.register_buffer("fitted", torch.tensor(False))

    @staticmethod
    def moments(features: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(count, Σx, Σxxᵀ) of ``features`` [N, D] in float64: sums, so batches and ranks add (all_reduce)."""
        if features.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
        x = features.detach().double()
        return x.shape[0], x.sum(0), x.T @ x

    @classmethod
    def from_moments(
        cls, count: int | float, sum_: torch.Tensor, sum_outer: torch.Tensor
    ) -> FeatureStandardizer:
        """The standardizer of the features whose ``moments`` sum to these."""
        dim = sum_.shape[-1]
        if sum_.shape != (dim,) or sum_outer.shape != (dim, dim):
            raise ValueError(
                f"moments of shapes {tuple(sum_.shape)} and {tuple(sum_outer.shape)} do not match"
            )
        count = float(count)
        mean = sum_.double() / count
        covariance = sum_outer.double() / count - torch.outer(mean, mean)
        covariance = (covariance + covariance.T) / 2
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        # Every entry of H is ±1/sqrt(D), so channel i of H·Λ·Hᵀ is Σ_k λ_k / D = tr(Σ)/D whatever Λ is.
        variance = eigenvalues.clamp_min(0).sum() / dim
        if not variance > 0:
            raise ValueError(f"the features have no variance (count {count:g}): nothing to standardize")
        standardizer = cls(dim)
        standardizer.mean.copy_(mean)
        standardizer.rotation.copy_(hadamard(dim) @ eigenvectors.T)
        standardizer.scale.copy_(variance.sqrt())
        standardizer.fitted.fill_(True)
        return standardizer

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(
                "FeatureStandardizer is not fitted: build it with FeatureStandardizer.from_moments "
                "or load a fitted state_dict"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardize ``x`` [..., D] along its last dim (in the buffers' dtype, float32 unless converted)."""
        self._check_fitted()
        return (x.to(self.mean.dtype) - self.mean) @ self.rotation.T / self.scale

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Back to the teacher's space: the rotation is orthogonal, so its inverse is its transpose."""
        self._check_fitted()
        return y.to(self.mean.dtype) * self.scale @ self.rotation + self.mean
