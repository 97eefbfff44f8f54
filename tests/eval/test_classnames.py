"""Class-name prompts cleaned the same way for every dataset; numbered ImageFolders labelled by number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samclip.data.classnames import (
    COCO_STUFF_CLASSES,
    CONTEXT_CLASSES,
    VOC_CLASSES,
    prompt_names,
    read_classnames,
)
from samclip.eval.datasets.classification import image_folder_loader
from samclip.eval.datasets.semseg import SegmentationDataset


def test_voc_and_context_compound_words_become_words() -> None:
    voc = dict(zip(VOC_CLASSES, prompt_names(VOC_CLASSES), strict=True))
    assert (voc["diningtable"], voc["pottedplant"], voc["tvmonitor"]) == (
        "dining table",
        "potted plant",
        "tv monitor",
    )
    assert voc["aeroplane"] == "aeroplane" and voc["background"] == "background"
    context = dict(zip(CONTEXT_CLASSES, prompt_names(CONTEXT_CLASSES), strict=True))
    assert (context["pottedplant"], context["tvmonitor"], context["bedclothes"]) == (
        "potted plant",
        "tv monitor",
        "bedclothes",
    )


def test_coco_stuff_tags_are_stripped_as_for_panoptic() -> None:
    stuff = dict(zip(COCO_STUFF_CLASSES, prompt_names(COCO_STUFF_CLASSES), strict=True))
    assert stuff["building-other"] == "building" and stuff["desk-stuff"] == "desk"
    assert stuff["wall-brick"] == "wall brick" and stuff["wall-other"] == "wall"
    assert stuff["sky-other"] == "sky" and stuff["potted plant"] == "potted plant"
    assert not any("-" in name for name in stuff.values())
    assert len(set(stuff.values())) == 171
    # The same rule as COCO panoptic's merged names, and a collision keeps the original spelling.
    assert prompt_names(["wall-other-merged", "tvmonitor"]) == ("wall", "tv monitor")
    assert prompt_names(["sky-other-merged", "sky"]) == ("sky-other-merged", "sky")


def test_a_dataset_prompts_cleaned_names_and_reports_its_own() -> None:
    dataset = SegmentationDataset("voc", VOC_CLASSES, [], lambda x: x, background_index=0)
    assert dataset.classnames[11] == "diningtable" and dataset.prompts[11] == "dining table"


def _image_folder(root: Path, folders: list[str]) -> None:
    for name in folders:
        (root / name).mkdir(parents=True)
        value = int(name) if name.isdigit() else len(name)
        Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(root / name / "a.png")


def test_numbered_image_folders_are_labelled_by_number(tmp_path: Path) -> None:
    _image_folder(tmp_path, [str(i) for i in range(12)])  # as strings, "10" and "11" sort before "2"

    def first_pixel(image: Image.Image) -> torch.Tensor:
        return torch.tensor(np.asarray(image)[0, 0, 0], dtype=torch.long)

    loader, folders = image_folder_loader(tmp_path, first_pixel, batch_size=12, num_workers=0)
    assert folders == [str(i) for i in range(12)]
    pixels, labels = next(iter(loader))
    assert torch.equal(pixels, labels)  # each image holds its folder's number
    assert read_classnames(None, folders)[10] == "10"


def test_named_folders_keep_torchvision_order_and_gaps_in_numbers_are_an_error(tmp_path: Path) -> None:
    _image_folder(tmp_path / "named", ["pottedplant", "cat", "dog_breed"])
    _, folders = image_folder_loader(tmp_path / "named", np.asarray, batch_size=1, num_workers=0)
    assert folders == ["cat", "dog_breed", "pottedplant"]
    assert read_classnames(None, folders) == ["cat", "dog breed", "potted plant"]
    _image_folder(tmp_path / "gap", ["0", "1", "3"])
    with pytest.raises(ValueError, match=r"0\.\.N-1"):
        image_folder_loader(tmp_path / "gap", np.asarray, batch_size=1, num_workers=0)
