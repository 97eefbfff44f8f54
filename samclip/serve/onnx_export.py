"""ONNX export for deployment: the image encoder with both heads (one file per resolution) and SAM's prompt
encoder + mask decoder in segment_anything's ONNX layout (``scripts/export_onnx_model.py``'s inputs/outputs).

    samclip-export final.pt --format onnx --out onnx/ [--resolutions 224,1024]

``image_encoder_<R>.onnx``: ``images`` [1, 3, R, R] float in [0, 1] (for SAM: resize the longest side to the
frame and pad bottom/right with SAM's pixel mean, as ``SamPredictor`` does; the file normalises itself) ->
``image_embeddings`` (SAM's neck), ``clip_image_embeds``, ``clip_patch_embeds``.
``sam_decoder.onnx``: ``image_embeddings, point_coords, point_labels, mask_input, has_mask_input,
orig_im_size`` -> ``masks, iou_predictions, low_res_masks``, exactly what segment_anything's ONNX demos feed.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.utils.onnx import SamOnnxModel
from timm.layers import resample_abs_pos_embed_nhwc
from torch import nn

from samclip.models.samclip_model import SamClipModel
from samclip.models.segment_anything_view import as_segment_anything

DECODER_FILE = "sam_decoder.onnx"
CONFIG_FILE = "onnx_config.json"
ENCODER_OUTPUTS = ["image_embeddings", "clip_image_embeds", "clip_patch_embeds"]
DECODER_INPUTS = [
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
]
DECODER_OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]


def encoder_file(resolution: int) -> str:
    return f"image_encoder_{resolution}.onnx"


class EncoderWithHeads(nn.Module):
    """Float [B, 3, R, R] in [0, 1] -> (SAM neck, CLIP image embedding, CLIP patch embeddings), one backbone pass.

    The file has one resolution, so the absolute position embedding is resampled to it once, here: ONNX has
    no antialiased bicubic resize (what timm resamples with at run time).
    """

    def __init__(self, model: SamClipModel, resolution: int) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        grid = resolution // model.config.patch_size
        pos_embed = self.model.backbone.pos_embed
        self.model.backbone.pos_embed = nn.Parameter(resample_abs_pos_embed_nhwc(pos_embed, (grid, grid)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(images, with_neck=True)
        clip = self.model.clip_head(features.tokens, dense=True)
        return features.neck, clip.image_embeds, clip.patch_embeds


class PromptDecoder(SamOnnxModel):
    """segment_anything's ``SamOnnxModel`` with the padding crop computed in the graph.

    The PyPI release (1.0) crops with Python ints, so the tracer bakes the dummy input's aspect ratio into
    the file and masks of other image shapes come out shifted (segment-anything issue #56, fixed on its main
    branch after 1.0). Slicing by tensors keeps ``orig_im_size`` an input.
    """

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        masks = F.interpolate(
            masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        prepadded = self.resize_longest_image_size(orig_im_size, self.img_size).to(torch.int64)
        masks = masks[..., : prepadded[0], : prepadded[1]]
        size = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)


def export_onnx(
    model: SamClipModel, out: str | Path, resolutions: Sequence[int] | None = None, opset: int = 17
) -> Path:
    """Write the encoder at each resolution (default: the SAM frame), the prompt decoder and ``onnx_config.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    config = model.config
    resolutions = list(resolutions or [config.image_size])
    for resolution in resolutions:
        if resolution % config.patch_size:
            raise ValueError(
                f"--resolutions: {resolution} is not a multiple of the patch size {config.patch_size}"
            )
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter (what segment_anything's script uses) warns about itself and about traced ints.
        warnings.simplefilter("ignore")
        for resolution in resolutions:
            torch.onnx.export(
                EncoderWithHeads(model, resolution),
                (torch.rand(1, 3, resolution, resolution),),
                str(out / encoder_file(resolution)),
                input_names=["images"],
                output_names=ENCODER_OUTPUTS,
                opset_version=opset,
                dynamo=False,
            )
        decoder = PromptDecoder(as_segment_anything(model), return_single_mask=False)
        grid, low_res = config.grid_size, 4 * config.grid_size
        dummy = (
            torch.randn(1, config.prompt_embed_dim, grid, grid),
            torch.randint(0, config.image_size, (1, 5, 2)).float(),
            torch.randint(0, 4, (1, 5)).float(),
            torch.randn(1, 1, low_res, low_res),
            torch.tensor([1.0]),
            torch.tensor([1500.0, 2250.0]),
        )
        torch.onnx.export(
            decoder,
            dummy,
            str(out / DECODER_FILE),
            input_names=DECODER_INPUTS,
            output_names=DECODER_OUTPUTS,
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            opset_version=opset,
            dynamo=False,
        )
    (out / CONFIG_FILE).write_text(
        json.dumps(
            {
                "sam_frame": config.image_size,
                "encoders": {str(r): encoder_file(r) for r in resolutions},
                "decoder": DECODER_FILE,
                "images": "float RGB in [0, 1]; for SAM resize the longest side to sam_frame, pad bottom/right "
                "with the pixel mean (123.675, 116.28, 103.53)/255; the encoder normalises",
                "decoder_point_coords": "pixels of the resized image (ResizeLongestSide(sam_frame).apply_coords)",
            },
            indent=2,
        )
        + "\n"
    )
    return out
