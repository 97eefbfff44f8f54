"""The batch previews: what is drawn is exactly the masks and prompts of the batch."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from samclip.cli.data import main as data_cli
from samclip.data import ClipBatch, SamBatch
from samclip.data.preview import (
    CAPTION_TILE,
    MASK_ALPHA,
    _colour,
    draw_sam_image,
    read_captions,
    save_clip_preview,
    with_caption,
)
from samclip.models.prompts import SamPrompts


def _batch() -> SamBatch:
    image = torch.full((1, 3, 32, 32), 0.5)
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 4:12, 4:20] = True
    return SamBatch(
        images=image,
        input_sizes=torch.tensor([[24, 32]]),
        original_sizes=torch.tensor([[48, 64]]),
        prompts=[SamPrompts(0, point_coords=torch.tensor([[[16.0, 8.0]]]), point_labels=torch.tensor([[1]]))],
        gt_masks=[mask],
    )


def test_sam_preview_tints_exactly_the_masks_and_marks_the_prompts():
    batch = _batch()
    picture = np.asarray(draw_sam_image(batch, 0)).astype(int)
    assert picture.shape == (24, 32, 3)  # the unpadded input region
    grey = 128
    mask = batch.gt_masks[0][0, :24].numpy()
    point_area = np.zeros_like(mask)
    point_area[3:14, 11:22] = True  # a disc of radius 4 around (16, 8), with its outline
    outside = ~mask & ~point_area
    assert (picture[outside] == grey).all()
    tinted = picture[mask & ~point_area]
    colour = np.asarray(_colour(0)) / 255.0  # the first mask's colour
    expected = ((1 - MASK_ALPHA) * 0.5 + MASK_ALPHA * colour) * 255.0
    assert np.abs(tinted - expected).max() <= 1.0
    assert (picture[8, 16] != tinted[0]).any()  # the point is drawn over the mask


def test_clip_preview_is_a_grid_of_the_crops(tmp_path):
    images = torch.rand(3, 3, 16, 16)
    path = save_clip_preview(ClipBatch(images=images, resolution=16), tmp_path / "clip.png", columns=2)
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (32, 32, 3)
    first = (images[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(sheet[:16, :16], first)


def test_captions_are_the_shards_txt_of_the_batch_keys(tmp_path):
    from samclip.data.clip_stream import ClipStream

    data_cli(["synth", "--out", str(tmp_path / "data")])
    shards = sorted((tmp_path / "data" / "clip").glob("*.tar"))
    expected = {}
    for shard in shards:  # read independently of webdataset
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".txt"):
                    expected[member.name[: -len(".txt")]] = tar.extractfile(member).read().decode()
    stream = ClipStream(
        str(tmp_path / "data" / "clip"), resolutions=[32], base_batch_size=6, base_resolution=32, seed=1,
        num_workers=0, resampled=True, steps_per_epoch=1,
    )  # fmt: skip
    keys = next(iter(stream)).keys
    captions = read_captions(str(tmp_path / "data" / "clip"), keys)
    assert captions == [expected[key] for key in keys] and len(set(captions)) > 1


def test_a_caption_is_written_under_its_crop():
    crop = Image.fromarray(np.full((32, 32, 3), 90, np.uint8))
    tile = np.asarray(with_caption(crop, "a red square on grey"))
    assert tile.shape[1] == CAPTION_TILE and tile.shape[0] > CAPTION_TILE
    assert (tile[:CAPTION_TILE] == 90).all()  # the crop, scaled
    band = tile[CAPTION_TILE:]
    blank = np.asarray(with_caption(crop, " "))[CAPTION_TILE:]
    assert (band < 128).any() and not np.array_equal(band, blank)
    other = np.asarray(with_caption(crop, "two blue circles"))[CAPTION_TILE:]
    assert not np.array_equal(band, other)


def test_preview_cli_on_synthetic_data(tmp_path, capsys):
    data_cli(["synth", "--out", str(tmp_path / "data")])
    data_cli(
        [
            "preview",
            "sam",
            str(tmp_path / "data" / "sam"),
            "--out",
            str(tmp_path / "sam.png"),
            "--resolution",
            "256",
            "--num-images",
            "2",
        ]
    )
    data_cli(
        [
            "preview",
            "clip",
            str(tmp_path / "data" / "clip"),
            "--out",
            str(tmp_path / "clip.png"),
            "--resolution",
            "64",
            "--num-images",
            "4",
        ]
    )
    assert Image.open(tmp_path / "sam.png").size == (1024, 512)
    width, height = Image.open(tmp_path / "clip.png").size
    assert width == 4 * CAPTION_TILE and height > CAPTION_TILE  # four captioned crops in a row
    assert "wrote" in capsys.readouterr().out


def test_a_folder_of_tars_stands_for_its_tars(tmp_path):
    from samclip.data.shards import expand_urls

    data = tmp_path / "data"
    data_cli(["synth", "--out", str(data)])
    tars = sorted(str(p) for p in (data / "sam").glob("*.tar"))
    assert len(tars) >= 2
    assert expand_urls(str(data / "sam")) == tars
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "sa_1.jpg").write_bytes(b"")
    (pairs / "sa_1.json").write_text("{}")
    assert expand_urls(str(pairs)) == [str(pairs)]  # a folder of jpg/json pairs is itself the shard
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"no shards in {tmp_path / 'empty'}"):
        expand_urls(str(tmp_path / "empty"))


def test_shell_globs_expand_like_brace_patterns(tmp_path):
    from samclip.data.shards import expand_urls

    data = tmp_path / "data"
    data_cli(["synth", "--out", str(data)])
    tars = sorted(str(p) for p in (data / "clip").glob("*.tar"))
    assert expand_urls(str(data / "clip" / "*.tar")) == tars
    assert expand_urls([str(data / "clip" / "0000[01].tar")]) == tars[:2]
    assert expand_urls(str(data / "clip" / "{00000..00001}.tar")) == tars[:2]
    with pytest.raises(FileNotFoundError, match=r"matches no file"):
        expand_urls(str(data / "clip" / "*.tgz"))
    literal = tmp_path / "stages=[multitask]"  # an existing path with glob characters is taken as it is
    (data / "clip").rename(literal)
    assert expand_urls(str(literal)) == sorted(str(p) for p in literal.glob("*.tar"))


def test_points_stay_visible_in_a_1024_frame_preview():
    frame = 1024
    batch = SamBatch(
        images=torch.full((1, 3, frame, frame), 0.5),
        input_sizes=torch.tensor([[frame, frame]]),
        original_sizes=torch.tensor([[frame, frame]]),
        prompts=[
            SamPrompts(0, point_coords=torch.tensor([[[500.0, 500.0]]]), point_labels=torch.tensor([[1]]))
        ],
    )
    picture = np.asarray(draw_sam_image(batch, 0)).astype(int)
    rows = np.nonzero((picture != 128).any(-1).any(1))[0]
    # Scaled into a 512-px preview cell the disc keeps a diameter of at least 16 px (32 in the frame).
    assert rows.max() - rows.min() >= 32
