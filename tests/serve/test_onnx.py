"""ONNX export in onnxruntime against PyTorch: encoder outputs, and masks through segment_anything's decoder layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from samclip.cli.export import main as export_main
from samclip.models.preprocess import pad_to_square
from samclip.serve.merged import MergedSamClip

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_dir(final_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    export_main([str(final_checkpoint), "--format", "onnx", "--out", str(out), "--resolutions", "64,256"])
    return out


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def sam_frame_pixels(image: np.ndarray, frame: int) -> torch.Tensor:
    resized = ResizeLongestSide(frame).apply_image(image)
    return pad_to_square(torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255.0, frame)


def test_config_names_the_files(onnx_dir: Path) -> None:
    config = json.loads((onnx_dir / "onnx_config.json").read_text())
    assert config["sam_frame"] == 256
    for name in [*config["encoders"].values(), config["decoder"]]:
        assert (onnx_dir / name).is_file()


@pytest.mark.parametrize("resolution", [64, 256])
def test_encoder_matches_pytorch(onnx_dir: Path, merged: MergedSamClip, resolution: int) -> None:
    pixels = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(resolution))
    neck, embeds, patches = session(onnx_dir / f"image_encoder_{resolution}.onnx").run(
        None, {"images": pixels.numpy()}
    )
    with torch.no_grad():
        features = merged.model.forward_features(pixels)
        clip = merged.model.clip_head(features.tokens, dense=True)
    np.testing.assert_allclose(neck, features.neck.numpy(), atol=1e-4)
    np.testing.assert_allclose(embeds, clip.image_embeds.numpy(), atol=1e-4)
    np.testing.assert_allclose(patches, clip.patch_embeds.numpy(), atol=1e-4)


@pytest.mark.parametrize("shape", [(120, 200), (300, 90)])  # two aspect ratios, neither the export's dummy
def test_decoder_masks_match_model_segment(
    onnx_dir: Path, merged: MergedSamClip, shape: tuple[int, int]
) -> None:
    image = (np.random.default_rng(shape[0]).random((*shape, 3)) * 255).astype(np.uint8)
    (neck,) = session(onnx_dir / "image_encoder_256.onnx").run(
        ["image_embeddings"], {"images": sam_frame_pixels(image, 256).numpy()}
    )
    decoder = session(onnx_dir / "sam_decoder.onnx")
    transform = ResizeLongestSide(256)
    box = np.array([[10.0, 15.0, 0.6 * shape[1], 0.7 * shape[0]]])
    point = np.array([[0.4 * shape[1], 0.5 * shape[0]]])
    cases = {
        # segment_anything's ONNX convention: a box is two corner points labelled 2 and 3; points get a padding point.
        "box": (
            transform.apply_coords(box.reshape(1, 2, 2), shape),
            np.array([[2.0, 3.0]]),
            {"boxes": box[0]},
        ),
        "point": (
            np.concatenate([transform.apply_coords(point[None], shape), np.zeros((1, 1, 2))], axis=1),
            np.array([[1.0, -1.0]]),
            {"points": point, "point_labels": [1]},
        ),
    }
    for name, (coords, labels, prompt) in cases.items():
        masks, scores, _ = decoder.run(None, {
            "image_embeddings": neck, "point_coords": coords.astype(np.float32), "point_labels": labels.astype(np.float32),
            "mask_input": np.zeros((1, 1, 64, 64), np.float32), "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(shape, np.float32),
        })  # fmt: skip
        assert masks.shape == (1, 4, *shape), name  # index 0: the single-mask output, 1-3: multimask
        expected = merged.segment(image, **prompt)
        ours = masks[0, 0] > 0
        reference = expected.masks[0].numpy()
        union = (ours | reference).sum()
        assert union == 0 or (ours & reference).sum() / union >= 0.99, name
        assert scores[0, 0] == pytest.approx(float(expected.scores[0]), abs=1e-4), name
