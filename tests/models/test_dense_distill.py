"""RADIO-style dense distillation parts: Hadamard matrices, PHI-S, the adaptor head, the feature loss, resampling.

References are independent of the code under test: H·Hᵀ = I, moments of Gaussians with a known covariance,
hand-written cosine and smooth-L1, and PIL's resize for the resampling.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from samclip.dense_losses import DenseFeatureLoss, resample_to_grid
from samclip.models.adaptor_head import AdaptorHead, AdaptorOutput
from samclip.models.feature_standardizer import FeatureStandardizer, hadamard

# --- Hadamard ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 4, 32, 12, 24, 48, 384, 768])
def test_hadamard_is_orthogonal_with_equal_magnitude_entries(dim: int) -> None:
    h = hadamard(dim)
    assert h.dtype == torch.float64 and h.shape == (dim, dim)
    torch.testing.assert_close(h @ h.T, torch.eye(dim, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        h.abs(), torch.full((dim, dim), dim**-0.5, dtype=torch.float64), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("dim", [10, 0, 36])
def test_hadamard_rejects_unsupported_sizes(dim: int) -> None:
    with pytest.raises(ValueError, match=rf"size {dim}\b.*2\^k and 12·2\^k"):
        hadamard(dim)


# --- PHI-S standardizer -----------------------------------------------------------------------------------

DIM = 48  # 12·4: the Paley ⊗ Sylvester branch


def _gaussian(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num`` samples of N(μ, Σ) with a known μ and a correlated, strongly anisotropic Σ: a random rotation of
    eigenvalues 0.05 ... 20, then channel scales 0.3 ... 3 so the channels' own variances differ too."""
    g = torch.Generator().manual_seed(0)  # μ and Σ are fixed; only the samples depend on ``seed``
    mean = torch.randn(DIM, generator=g, dtype=torch.float64) * 3
    basis, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=g, dtype=torch.float64))
    eigenvalues = torch.logspace(math.log10(0.05), math.log10(20.0), DIM, dtype=torch.float64)
    channel_scales = torch.diag(torch.logspace(math.log10(0.3), math.log10(3.0), DIM, dtype=torch.float64))
    covariance = channel_scales @ basis @ torch.diag(eigenvalues) @ basis.T @ channel_scales
    noise = torch.randn(num, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return mean + noise @ torch.linalg.cholesky(covariance).T, mean, covariance


def _fit(x: torch.Tensor) -> FeatureStandardizer:
    return FeatureStandardizer.from_moments(*FeatureStandardizer.moments(x))


def test_population_moments_give_equal_unit_variances_exactly() -> None:
    _, mean, covariance = _gaussian(1, seed=1)
    standardizer = FeatureStandardizer.from_moments(1, mean, covariance + torch.outer(mean, mean)).double()
    rotation, scale = standardizer.rotation, standardizer.scale
    close = dict(rtol=1e-6, atol=1e-6)  # the buffers are float32
    torch.testing.assert_close(standardizer.mean, mean, **close)
    torch.testing.assert_close(scale**2, covariance.trace() / DIM, **close)
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(DIM, dtype=torch.float64), **close)
    output_covariance = rotation @ covariance @ rotation.T / scale**2
    torch.testing.assert_close(output_covariance.diagonal(), torch.ones(DIM, dtype=torch.float64), **close)


def test_standardizer_on_correlated_gaussian_data() -> None:
    num = 50_000
    fit_data, _, covariance = _gaussian(num, seed=1)
    held_out, _, _ = _gaussian(num, seed=2)
    eigenvalues = torch.linalg.eigvalsh(covariance)
    assert covariance.diagonal().max() / covariance.diagonal().min() > 50  # anisotropic channels going in
    assert eigenvalues.max() / eigenvalues.min() > 100  # a PCA alone would leave unequal variances
    standardizer = _fit(fit_data).double()

    # On the data it was fitted to, the diagonal is 1 by construction (up to the float32 buffers' rounding).
    fitted_out = standardizer(fit_data)
    torch.testing.assert_close(fitted_out.mean(0), torch.zeros(DIM, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        torch.cov(fitted_out.T, correction=0).diagonal(),
        torch.ones(DIM, dtype=torch.float64),
        rtol=1e-5,
        atol=0,
    )

    # On fresh data: channel i is r_iᵀ(x − μ̂)/σ̂ with r_i a unit vector. Its mean has variance 1/N (held-out
    # mean) + 1/N (fitted μ̂). Its variance misses 1 by r_iᵀ(Σ − Σ̂)r_i/σ̂², a sample-variance error of sd
    # sqrt(2/N), plus the held-out sample variance's own sqrt(2/N): sd 2/sqrt(N). Five sd over 48 channels.
    out = standardizer(held_out)
    assert out.mean(0).abs().max() < 5 * math.sqrt(2 / num)
    variances = torch.cov(out.T).diagonal()
    assert (variances - 1).abs().max() < 5 * 2 / math.sqrt(num)


def test_inverse_undoes_forward_on_any_leading_shape() -> None:
    x, _, _ = _gaussian(2_000, seed=3)
    standardizer = _fit(x)  # float32 buffers, the default
    batch = x[:24].float().reshape(2, 3, 4, DIM)
    y = standardizer(batch)
    assert y.shape == batch.shape and y.dtype == torch.float32
    torch.testing.assert_close(y.reshape(-1, DIM), standardizer(batch.reshape(-1, DIM)))
    torch.testing.assert_close(standardizer.inverse(y), batch, rtol=0, atol=1e-4)


def test_moments_summed_over_halves_equal_the_whole() -> None:
    """What an all_reduce of per-rank moments relies on."""
    x, _, _ = _gaussian(3_001, seed=4)
    first, second, whole = (FeatureStandardizer.moments(part) for part in (x[:1_200], x[1_200:], x))
    summed = (first[0] + second[0], first[1] + second[1], first[2] + second[2])
    assert summed[0] == whole[0] == 3_001
    torch.testing.assert_close(summed[1], whole[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(summed[2], whole[2], rtol=1e-12, atol=0)
    probe = x[:50]
    torch.testing.assert_close(
        FeatureStandardizer.from_moments(*summed).double()(probe),
        FeatureStandardizer.from_moments(*whole).double()(probe),
        rtol=0,
        atol=1e-6,
    )


def test_pairwise_distances_scale_by_exactly_one_over_sigma() -> None:
    x, _, _ = _gaussian(5_000, seed=5)
    standardizer = _fit(x).double()
    sigma = torch.cov(x.T, correction=0).trace().div(DIM).sqrt()
    torch.testing.assert_close(standardizer.scale, sigma, rtol=1e-6, atol=0)
    a, b = x[:40], x[40:90]
    expected = torch.cdist(a, b) / sigma
    # Exact up to the float32 rounding of the fitted buffers (the scale and the rotation's orthogonality).
    torch.testing.assert_close(torch.cdist(standardizer(a), standardizer(b)), expected, rtol=1e-6, atol=0)
    # Per-channel whitening also gives unit variances, but stretches each channel by its own factor.
    whiten = lambda v: (v - x.mean(0)) / x.std(0)  # noqa: E731
    assert not torch.allclose(torch.cdist(whiten(a), whiten(b)), expected, rtol=0.05)


def test_state_dict_round_trip(tmp_path) -> None:
    x, _, _ = _gaussian(2_000, seed=6)
    fitted = _fit(x)
    torch.save(fitted.state_dict(), tmp_path / "phis.pt")
    loaded = FeatureStandardizer(DIM)
    loaded.load_state_dict(torch.load(tmp_path / "phis.pt", weights_only=True))
    assert bool(loaded.fitted)
    probe = x[:10].float()
    assert torch.equal(loaded(probe), fitted(probe))
    assert torch.equal(loaded.inverse(probe), fitted.inverse(probe))


def test_unfitted_standardizer_raises() -> None:
    standardizer = FeatureStandardizer(DIM)
    with pytest.raises(RuntimeError, match=r"not fitted.*from_moments"):
        standardizer(torch.zeros(2, DIM))
    with pytest.raises(RuntimeError, match="not fitted"):
        standardizer.inverse(torch.zeros(2, DIM))


def test_constant_features_are_rejected() -> None:
    with pytest.raises(ValueError, match="no variance"):
        _fit(torch.ones(10, 4))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        FeatureStandardizer.moments(torch.ones(2, 3, 4))


# --- Adaptor head -----------------------------------------------------------------------------------------


def test_adaptor_head_shapes_and_hidden_default() -> None:
    tokens = torch.randn(2, 4, 5, 16)
    out = AdaptorHead(16, 24)(tokens)
    assert isinstance(out, AdaptorOutput)
    assert out.summary.shape == (2, 24) and out.features.shape == (2, 24, 4, 5)
    assert AdaptorHead(16, 24).feature_mlp[1].out_features == 16
    assert AdaptorHead(16, 24, hidden_dim=40).summary_mlp[1].out_features == 40
    with pytest.raises(ValueError, match=r"\[B, h, w, C\]"):
        AdaptorHead(16, 24)(torch.randn(2, 20, 16))


def test_summary_depends_on_every_token_of_its_image_alike() -> None:
    torch.manual_seed(0)
    head = AdaptorHead(8, 6)
    tokens = torch.randn(2, 4, 5, 8, requires_grad=True)  # 20 tokens > 8 channels: a max-pool would miss some
    (grad,) = torch.autograd.grad(head(tokens).summary[0] @ torch.randn(6), tokens)
    assert grad[0].abs().sum(-1).min() > 0
    torch.testing.assert_close(grad[0], grad[0, :1, :1].expand_as(grad[0]))  # the mean weighs tokens alike
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))


def test_summary_and_features_have_their_own_mlps() -> None:
    """RADIO trains a summary head and a feature head per teacher; neither loss moves the other's weights."""
    head = AdaptorHead(8, 6)
    out = head(torch.randn(2, 3, 4, 8))
    summary_params, feature_params = list(head.summary_mlp.parameters()), list(head.feature_mlp.parameters())
    from_summary = torch.autograd.grad(
        out.summary.sum(), feature_params, allow_unused=True, retain_graph=True
    )
    from_features = torch.autograd.grad(out.features.sum(), summary_params, allow_unused=True)
    assert all(g is None for g in (*from_summary, *from_features))


def test_dense_features_are_per_token() -> None:
    torch.manual_seed(0)
    head = AdaptorHead(8, 6)
    tokens = torch.randn(2, 3, 4, 8)
    changed = tokens.clone()
    changed[0, 1, 2] += torch.randn(8)
    before, after = head(tokens).features, head(changed).features
    moved = (before != after).any(dim=1)  # [B, h, w]
    expected = torch.zeros_like(moved)
    expected[0, 1, 2] = True
    assert torch.equal(moved, expected)


# --- Loss -------------------------------------------------------------------------------------------------


def _cosine_by_hand(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows of [N, D]."""
    return (a * b).sum(-1) / ((a * a).sum(-1).sqrt() * (b * b).sum(-1).sqrt())


def _smooth_l1_by_hand(a: torch.Tensor, b: torch.Tensor, beta: float) -> torch.Tensor:
    d = (a - b).abs()
    return torch.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta).mean()


def test_dense_feature_loss_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    student = AdaptorOutput(torch.randn(2, 3, generator=g), torch.randn(2, 3, 2, 4, generator=g))
    teacher_summary = torch.randn(2, 3, generator=g)
    teacher_features = student.features + torch.randn(2, 3, 2, 4, generator=g) * 0.6
    beta = 0.5
    d = (student.features - teacher_features).abs()
    assert (d < beta).any() and (d >= beta).any()  # both branches of smooth-L1 are exercised

    loss = DenseFeatureLoss(
        cosine_weight=0.7, smooth_l1_weight=1.3, summary_weight=0.4, features_weight=2.0, beta=beta
    )(student, teacher_summary, teacher_features)

    summary = 0.7 * (1 - _cosine_by_hand(student.summary, teacher_summary)).mean() + 1.3 * _smooth_l1_by_hand(
        student.summary, teacher_summary, beta
    )
    per_token = lambda f: f.permute(0, 2, 3, 1).reshape(-1, 3)  # noqa: E731  [B·h·w tokens, D]
    s_tok, t_tok = per_token(student.features), per_token(teacher_features)
    features = 0.7 * (1 - _cosine_by_hand(s_tok, t_tok)).mean() + 1.3 * _smooth_l1_by_hand(s_tok, t_tok, beta)
    torch.testing.assert_close(loss.summary, summary)
    torch.testing.assert_close(loss.features, features)
    torch.testing.assert_close(loss.total, 0.4 * summary + 2.0 * features)
    # The same cosine through torch's own function, on the token layout.
    torch.testing.assert_close(
        (1 - F.cosine_similarity(s_tok, t_tok, dim=-1)).mean(),
        (1 - _cosine_by_hand(s_tok, t_tok)).mean(),
    )
    torch.testing.assert_close(
        F.smooth_l1_loss(s_tok, t_tok, beta=beta), _smooth_l1_by_hand(s_tok, t_tok, beta)
    )


def test_dense_feature_loss_is_zero_when_student_matches_teacher() -> None:
    student = AdaptorOutput(torch.randn(3, 5), torch.randn(3, 5, 2, 2))
    loss = DenseFeatureLoss()(student, student.summary.clone(), student.features.clone())
    for part in loss:
        assert part.item() == pytest.approx(0.0, abs=1e-6)


def test_dense_feature_loss_rejects_mismatched_shapes() -> None:
    student = AdaptorOutput(torch.randn(2, 4), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"features \(2, 4, 3, 3\).*\(2, 4, 6, 6\).*resample_to_grid"):
        DenseFeatureLoss()(student, torch.randn(2, 4), torch.randn(2, 4, 6, 6))
    with pytest.raises(ValueError, match=r"summary \(2, 4\).*\(2, 5\)"):
        DenseFeatureLoss()(student, torch.randn(2, 5), torch.randn(2, 4, 3, 3))


# --- Resampling -------------------------------------------------------------------------------------------


def _pil_bilinear(plane: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's bilinear resize of one float plane: pixel-centre aligned, filter widened when shrinking."""
    image = Image.fromarray(plane.numpy().astype(np.float32))
    return torch.from_numpy(np.array(image.resize((size[1], size[0]), Image.Resampling.BILINEAR)))


@pytest.mark.parametrize("size", [(5, 5), (4, 6), (20, 16), (6, 18)])
def test_resample_matches_pil_and_interpolate(size: tuple[int, int]) -> None:
    features = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    out = resample_to_grid(features, size)
    assert out.shape == (2, 3, *size)
    reference = torch.stack([torch.stack([_pil_bilinear(p, size) for p in image]) for image in features])
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    downsampling = size[0] < 12 or size[1] < 12
    torch.testing.assert_close(
        out, F.interpolate(features, size, mode="bilinear", align_corners=False, antialias=downsampling)
    )


def test_resample_is_identity_at_the_same_size() -> None:
    features = torch.randn(1, 4, 7, 9)
    assert torch.equal(resample_to_grid(features, (7, 9)), features)
    with pytest.raises(ValueError, match=r"\[B, D, h, w\]"):
        resample_to_grid(torch.randn(4, 7, 9), (3, 3))
