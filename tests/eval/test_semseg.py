"""Zero-shot semantic segmentation: dataset layouts, a constructed known-answer model, the composed mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from constructed import dual_basis, voc_palette_png, write_voc
from PIL import Image
from torch import nn

from samclip.data.classnames import VOC_CLASSES
from samclip.eval.datasets.semseg import open_segmentation_dataset
from samclip.eval.semseg import evaluate_semseg
from samclip.models import ClipHeadOutput, SamClipOutput, get_model_config
from samclip.models.zeroshot_classifier import build_text_classifier
from samclip.serve.merged import MergedSamClip
from samclip.serve.zeroshot import _sample_points

# Two flat regions per image; boundaries fall on patch edges at 448 px, so the right answer is exact.
RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)
CAT, DOG, HORSE = VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog"), VOC_CLASSES.index("horse")


def _two_region_sample(
    left: tuple, right: tuple, left_class: int, right_class: int
) -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((224, 224, 3), dtype=np.uint8)
    image[:, :112], image[:, 112:] = left, right
    label = np.full((224, 224), left_class, dtype=np.uint8)
    label[:, 112:] = right_class
    label[:, 110:114] = 255  # VOC's boundary band: ignored
    return image, label


@pytest.fixture
def voc_root(tmp_path):
    return write_voc(
        tmp_path / "VOCdevkit" / "VOC2012",
        {
            "2007_000001": _two_region_sample(RED, BLUE, CAT, DOG),
            "2007_000002": _two_region_sample(GREEN, RED, HORSE, CAT),
        },
    )


class ColorToClassStub(nn.Module):
    """Stands in for the image model: each patch embeds at the class its mean colour is assigned to."""

    def __init__(self, colors: dict[tuple, int], targets: torch.Tensor) -> None:
        super().__init__()
        self.config = get_model_config("samclip_tiny")
        self.colors = torch.tensor(list(colors), dtype=torch.float) / 255
        self.classes = torch.tensor(list(colors.values()))
        self.targets = targets  # [C, D]
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor, sam_prompts=None, *, clip=True, dense=False, multimask=False):
        patches = nn.functional.avg_pool2d(images, 16).permute(0, 2, 3, 1)  # [B, h, w, 3]
        nearest = torch.cdist(patches.flatten(1, 2), self.colors[None]).argmin(-1).view(patches.shape[:3])
        embeds = self.targets[self.classes[nearest]]
        return SamClipOutput(clip=ClipHeadOutput(embeds.amax((1, 2)), embeds), sam=None)


def _stub_model(merged, assignment: dict[tuple, int]) -> MergedSamClip:
    classifier = build_text_classifier(merged.text.clip, merged.text.tokenizer, VOC_CLASSES)
    return MergedSamClip(ColorToClassStub(assignment, dual_basis(classifier).T), merged.text)


def test_voc_reader_keeps_palette_indices_and_the_ignore_band(voc_root):
    dataset = open_segmentation_dataset("voc", voc_root.parent.parent)  # the VOCdevkit parent works too
    samples = list(dataset)
    assert [s.name for s in samples] == ["2007_000001", "2007_000002"]
    assert set(np.unique(samples[0].label)) == {CAT, DOG, 255}
    assert samples[0].image.shape == (224, 224, 3) and dataset.background_index == 0


def test_voc_aug_split_reads_sbd_labels_from_segmentation_class_aug(voc_root):
    """mmseg's trainaug layout: aug.txt lists images whose labels are grey index PNGs in SegmentationClassAug."""
    augmented = voc_root / "SegmentationClassAug"
    augmented.mkdir()
    label = np.zeros((224, 224), np.uint8)
    label[10:50, 20:90] = DOG
    Image.fromarray(label, mode="L").save(augmented / "2007_000002.png")
    (voc_root / "ImageSets" / "Segmentation" / "aug.txt").write_text("2007_000002\n")
    samples = list(open_segmentation_dataset("voc", voc_root, split="aug"))
    assert [s.name for s in samples] == ["2007_000002"]
    np.testing.assert_array_equal(samples[0].label, label.astype(np.int64))


def test_clip_mode_on_a_constructed_model_scores_100_and_0_when_classes_are_swapped(
    merged, voc_root, tmp_path
):
    right = _stub_model(merged, {RED: CAT, BLUE: DOG, GREEN: HORSE})
    results = evaluate_semseg(right, tmp_path / "right", layout="voc", root=str(voc_root), mode="clip")
    assert results["mIoU"] == pytest.approx(100.0)
    assert results["per_class"]["cat"] == pytest.approx(100.0) and results["per_class"]["aeroplane"] is None
    swapped = _stub_model(merged, {RED: DOG, BLUE: CAT, GREEN: HORSE})
    results = evaluate_semseg(swapped, tmp_path / "swapped", layout="voc", root=str(voc_root), mode="clip")
    # cat and dog are swapped everywhere (IoU 0); horse stays right (IoU 100).
    assert results["per_class"]["cat"] == 0.0 and results["per_class"]["dog"] == 0.0
    assert results["per_class"]["horse"] == pytest.approx(100.0)
    assert results["mIoU"] == pytest.approx(100.0 / 3)
    assert len(list((tmp_path / "swapped" / "qualitative").glob("*.png"))) == 2


def test_composed_mode_without_confident_classes_predicts_background(merged, voc_root, tmp_path):
    """A threshold no probability reaches prompts nothing: with the weighted protocol every pixel is
    background, whose IoU is then 0; with the paper's the CLIP head's argmax stands."""
    results = evaluate_semseg(
        merged,
        tmp_path,
        layout="voc",
        root=str(voc_root),
        mode="composed",
        threshold=1.5,
        composed_protocol="weighted",
    )
    assert results["per_class"]["background"] == 0.0
    assert results["mIoU"] == 0.0 and results["pixel_accuracy"] == 0.0
    assert results["composed_protocol"] == "weighted"
    # Counted per image: no class passed the threshold on either.
    assert results["num_fallback_images"] == 2 == results["num_images"]
    assert results["fallback_images"] == ["2007_000001", "2007_000002"]
    image = np.asarray(Image.open(voc_root / "JPEGImages" / "2007_000001.jpg"))
    paper = merged.semantic_segment(image, VOC_CLASSES, mode="composed", threshold=1.5, background_index=0)
    assert not paper.prompts and torch.equal(paper.label_map, paper.clip_logits.argmax(0))
    assert paper.fell_back


def test_composed_mode_is_reproducible_with_its_seed(merged, voc_root, tmp_path):
    results = evaluate_semseg(
        merged, tmp_path, layout="voc", root=str(voc_root), mode="composed", threshold=0.05, max_images=1
    )
    assert results["resolution"] == merged.config.image_size and results["num_images"] == 1
    assert results["num_fallback_images"] == 0 and results["fallback_images"] == []
    image = np.asarray(Image.open(voc_root / "JPEGImages" / "2007_000001.jpg"))
    label_maps = [
        merged.semantic_segment(
            image, VOC_CLASSES[:6], mode="composed", threshold=0.05, background_index=0, seed=3
        ).label_map
        for _ in range(2)
    ]
    assert label_maps[0].shape == (224, 224) and torch.equal(label_maps[0], label_maps[1])
    assert len(label_maps[0].unique()) > 1  # some classes were prompted: the maps compare SAM masks


def test_point_sampling_stays_above_the_threshold():
    prob = torch.zeros(20, 30)
    prob[5:8, 10:12] = 0.9
    generator = torch.Generator().manual_seed(0)
    points = _sample_points(prob, 0.5, 3, generator)
    assert points.shape == (3, 2)
    assert all(prob[int(y), int(x)] > 0.5 for x, y in points)
    assert _sample_points(prob, 0.95, 3, generator) is None
    few = torch.zeros(4, 4)
    few[1, 2] = 0.7
    assert _sample_points(few, 0.5, 3, generator).tolist() == [[2.0, 1.0]]


def test_ade_context_and_cocostuff_layouts(tmp_path):
    label = np.array([[0, 1, 150], [255, 2, 3]], dtype=np.uint8)
    image = np.zeros((2, 3, 3), dtype=np.uint8)

    ade = tmp_path / "ADEChallengeData2016"
    (ade / "images" / "validation").mkdir(parents=True)
    Image.fromarray(image).save(ade / "images" / "validation" / "ADE_val_00000001.jpg")
    (ade / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(label, mode="L").save(ade / "annotations" / "validation" / "ADE_val_00000001.png")
    sample = next(iter(open_segmentation_dataset("ade20k", tmp_path)))
    np.testing.assert_array_equal(sample.label, [[255, 0, 149], [255, 1, 2]])

    context = tmp_path / "VOCdevkit" / "VOC2010"
    (context / "JPEGImages").mkdir(parents=True)
    Image.fromarray(image).save(context / "JPEGImages" / "2008_000002.jpg")
    voc_palette_png(label.clip(0, 59), context / "SegmentationClassContext" / "2008_000002.png")
    (context / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (context / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
    c59 = open_segmentation_dataset("context59", tmp_path / "VOCdevkit")
    c60 = open_segmentation_dataset("context60", context)
    assert len(c59.classnames) == 59 and len(c60.classnames) == 60
    np.testing.assert_array_equal(next(iter(c59)).label, [[255, 0, 58], [58, 1, 2]])
    np.testing.assert_array_equal(next(iter(c60)).label, [[0, 1, 59], [59, 2, 3]])

    stuff = tmp_path / "coco_stuff164k"
    (stuff / "images" / "val2017").mkdir(parents=True)
    Image.fromarray(image).save(stuff / "images" / "val2017" / "000000000139.jpg")
    (stuff / "annotations" / "val2017").mkdir(parents=True)
    Image.fromarray(label, mode="L").save(
        stuff / "annotations" / "val2017" / "000000000139_labelTrainIds.png"
    )
    sample = next(iter(open_segmentation_dataset("cocostuff", tmp_path)))
    np.testing.assert_array_equal(sample.label, label)


def test_missing_split_file_is_named(tmp_path):
    (tmp_path / "SegmentationClass").mkdir()
    with pytest.raises(FileNotFoundError, match=r"val\.txt"):
        open_segmentation_dataset("voc", tmp_path)
