"""RelPosAttention equals timm's SAM attention (forward and gradients) with each kernel, at the native and other sizes."""

from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch
from timm.models.vision_transformer_sam import Attention
from torch.nn.attention.flex_attention import create_block_mask

from samclip.models import create_model
from samclip.models.attention import (
    RelPosAttention,
    _decomposed_bias,
    relative_index,
    sdpa_kernel_choice,
    set_attention_kernel,
)

DIM, HEADS, NATIVE = 16, 2, 4


def _timm_attention(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attention = Attention(DIM, HEADS, qkv_bias=True, use_rel_pos=True, input_size=(NATIVE, NATIVE))
    with torch.no_grad():  # timm starts the tables at zero, which would hide a wrong bias
        attention.rel_pos_h.normal_()
        attention.rel_pos_w.normal_()
    return attention.train()


def _forward_backward(
    module: torch.nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = module(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    return out.detach(), {**grads, "input": x.grad}


@pytest.mark.parametrize("kernel", ["sdpa", "math"])
@pytest.mark.parametrize("grid", [(NATIVE, NATIVE), (6, 6), (3, 5)])
def test_forward_and_gradients_equal_timm(kernel: str, grid: tuple[int, int]) -> None:
    """At the tables' size and at others (the tables interpolated), including non-square grids."""
    reference = _timm_attention()
    ours = RelPosAttention.adopt(copy.deepcopy(reference))
    ours.kernel = kernel
    x = torch.randn(2, *grid, DIM, generator=torch.Generator().manual_seed(1))
    expected_out, expected_grads = _forward_backward(reference, x)
    out, grads = _forward_backward(ours, x)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("grid", [(NATIVE, NATIVE), (3, 5)])
def test_flex_forward_equals_timm_on_cpu(grid: tuple[int, int]) -> None:
    """FlexAttention has no CPU backward in torch; its forward (eager) is checked here."""
    reference = _timm_attention().eval()
    ours = RelPosAttention.adopt(copy.deepcopy(reference))
    ours.kernel = "flex"
    x = torch.randn(2, *grid, DIM, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*without torch.compile")  # eager: the unfused path
        out = ours(x)
    with torch.no_grad():
        torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-6)


def test_flex_score_mod_differentiates_to_the_dense_bias_gradient() -> None:
    """What FlexAttention's backward computes for the bias terms, through flex's own dense reference
    (``math_attention``, private: the public CPU path refuses a backward) against SDPA with the dense bias."""
    math_attention = sys.modules["torch._higher_order_ops.flex_attention"].math_attention
    generator = torch.Generator().manual_seed(3)
    batch, heads, height, width, dim = 2, 2, 3, 5, 8
    tokens = height * width

    def leaves() -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(4)
        shapes = [(batch, heads, tokens, dim)] * 3 + [
            (batch, heads, tokens, height),
            (batch, heads, tokens, width),
        ]
        return [torch.randn(*s, generator=g).requires_grad_(True) for s in shapes]

    weights = torch.randn(batch, heads, tokens, dim, generator=generator)
    q, k, v, rel_h, rel_w = flex_leaves = leaves()
    full = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= 0, None, None, tokens, tokens, device="cpu")
    out = math_attention(q, k, v, _decomposed_bias(rel_h, rel_w, width), full.as_tuple(), dim**-0.5, {})[0]
    (out * weights).sum().backward()

    q, k, v, rel_h, rel_w = dense_leaves = leaves()
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(batch, heads, tokens, tokens)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    (dense * weights).sum().backward()
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-6)
    for name, a, b in zip(("q", "k", "v", "rel_h", "rel_w"), flex_leaves, dense_leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_relative_index_is_cached_per_size_and_device() -> None:
    index = relative_index(4, torch.device("cpu"))
    assert relative_index(4, torch.device("cpu")) is index
    assert index.tolist()[0] == [3, 2, 1, 0] and index.tolist()[3] == [6, 5, 4, 3]


def test_the_model_uses_the_configured_kernel_everywhere() -> None:
    """Backbone and CLIP head blocks; the three kernels give the same embeddings."""
    torch.manual_seed(0)
    model = create_model("samclip_tiny", attention="math").eval()
    kernels = {m.kernel for m in model.modules() if isinstance(m, RelPosAttention)}
    assert kernels == {"math"}
    assert set_attention_kernel(model, "sdpa") == model.config.depth + model.config.clip_head_depth
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        sdpa = model(images).clip.image_embeds
        set_attention_kernel(model, "math")
        torch.testing.assert_close(model(images).clip.image_embeds, sdpa, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"model\.attention must be one of"):
        set_attention_kernel(model, "fast")


def test_sdpa_kernel_choice_names_a_backend() -> None:
    # On CPU a float bias that needs a gradient goes to the math kernel; on CUDA the answer is the point.
    name = sdpa_kernel_choice(1, 2, 16, 8, dtype=torch.float32, device=torch.device("cpu"))
    assert name in {"MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "OVERRIDEABLE"}
