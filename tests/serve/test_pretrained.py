"""open_clip / timm-style entry points, offline: list_models, create_model_and_transforms, tokenizers, the Hub."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from constructed import CLIP_NAME
from PIL import Image

import samclip
from samclip.models import MODEL_CONFIGS
from samclip.serve.merged import MergedSamClip


def test_list_models_are_the_sizes_create_model_builds() -> None:
    assert samclip.list_models() == sorted(MODEL_CONFIGS)
    assert {"samclip_vit_b", "samclip_vit_l", "samclip_vit_h", "samclip_tiny"} <= set(samclip.list_models())


def test_create_model_and_transforms_from_a_final_checkpoint(
    final_checkpoint: Path, merged: MergedSamClip
) -> None:
    model, train, val = samclip.create_model_and_transforms("samclip_tiny", pretrained=final_checkpoint)
    assert isinstance(model, MergedSamClip)
    for name, value in merged.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    image = Image.fromarray((np.random.default_rng(0).random((90, 130, 3)) * 255).astype(np.uint8))
    for transform in (train, val):
        pixels = transform(image)
        assert pixels.shape == (3, 224, 224) and pixels.min() >= 0.0 and pixels.max() <= 1.0
    # Training augments (random crop + flip from its own generator); evaluation is deterministic.
    draws = [train(image) for _ in range(6)]
    assert not all(torch.equal(draws[0], draw) for draw in draws[1:])
    assert torch.equal(val(image), val(image))
    with pytest.raises(ValueError, match="not 'samclip_vit_b'"):
        samclip.create_model_and_transforms("samclip_vit_b", pretrained=final_checkpoint)


def test_create_model_and_transforms_without_weights_is_create_model() -> None:
    torch.manual_seed(0)
    model, _, _ = samclip.create_model_and_transforms("samclip_tiny")
    torch.manual_seed(0)
    reference = samclip.create_model("samclip_tiny")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )


def test_get_tokenizer_follows_the_recorded_text_tower(
    final_checkpoint: Path, merged: MergedSamClip, tmp_path: Path
) -> None:
    merged.save_pretrained(tmp_path / "export")
    expected = open_clip.get_tokenizer(CLIP_NAME)(["a photo of a dog"])
    for source in (final_checkpoint, tmp_path / "export", CLIP_NAME):
        assert torch.equal(samclip.get_tokenizer(source)(["a photo of a dog"]), expected), source


def test_from_pretrained_reads_a_hub_snapshot(
    merged: MergedSamClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    merged.save_pretrained(tmp_path / "snapshot")
    asked = []

    def fake_snapshot_download(repo_id: str, revision: str | None = None) -> str:
        asked.append((repo_id, revision))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    loaded = samclip.from_pretrained("someone/samclip-tiny", revision="v1")
    assert asked == [("someone/samclip-tiny", "v1")]
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), merged.state_dict().values(), strict=True)
    )
    with pytest.raises(FileNotFoundError, match="neither a local"):
        samclip.from_pretrained(str(tmp_path / "missing" / "dir"))


def test_push_to_hub_uploads_the_export_and_a_model_card(
    merged: MergedSamClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "multitask").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        "stages: [multitask]\nstage:\n  multitask: {trainable: ['backbone.*'], lr: 4.0e-05}\n"
        "loss: {clip_weight: 1.0, sam_weight: 10.0}\ndata: {clip: {urls: /d/clip}, sam: {urls: /d/sam}}\n"
    )
    (run_dir / "multitask" / "metrics.jsonl").write_text('{"step": 8, "loss": 0.25}\n{"step": 9, "lo')
    results = tmp_path / "zeroshot_cls" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps({"top1": 61.5, "num_classes": 3, "classnames": ["a"]}))
    uploaded: dict[str, str] = {}

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            pass

        def create_repo(self, repo_id: str, private: bool, exist_ok: bool) -> None:
            uploaded["repo"] = repo_id

        def upload_folder(self, repo_id: str, folder_path: str, commit_message: str) -> str:
            for path in Path(folder_path).iterdir():
                uploaded[path.name] = path.read_text() if path.suffix in (".md", ".json") else "<binary>"
            return f"https://hub/{repo_id}/commit/1"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    url = samclip.push_to_hub(merged, "me/samclip-tiny", run_dir=run_dir, results=[results])
    assert url == "https://hub/me/samclip-tiny/commit/1"
    assert {"config.json", "model.safetensors", "README.md"} <= uploaded.keys()
    card = uploaded["README.md"]
    assert "# samclip_tiny (samclip)" in card and CLIP_NAME in card
    assert "| multitask | backbone.* | 4e-05 | 8 | 0.25 |" in card  # the torn last line is skipped
    assert "| top1 | 61.5 |" in card and "| num_classes | 3 |" in card
