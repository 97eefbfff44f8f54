"""What open_clip / timm users reach for: ``list_models``, ``create_model_and_transforms``, ``get_tokenizer``,
``from_pretrained`` / ``push_to_hub`` with a model card written from the run.

    model, preprocess_train, preprocess_val = samclip.create_model_and_transforms("samclip_vit_b", pretrained="merged/")
    tokenizer = samclip.get_tokenizer("merged/")
    merged = samclip.from_pretrained("merged/")  # or a Hugging Face Hub repo id
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from samclip.models import MODEL_CONFIGS, SamClipConfig, SamClipModel, create_model

if TYPE_CHECKING:
    from samclip.serve.merged import MergedSamClip

MODEL_CARD = "README.md"


def list_models() -> list[str]:
    """The model names ``create_model`` builds (SAM's published sizes and the tiny test size)."""
    return sorted(MODEL_CONFIGS)


def model_name(config: SamClipConfig) -> str | None:
    """The ``list_models()`` name of a config, if it is one of them."""
    return next((name for name, known in MODEL_CONFIGS.items() if known == config), None)


class TrainTransform:
    """The D_CLIP stream's augmentation (random resized crop + flip) as a PIL -> [3, R, R] float [0, 1] callable."""

    def __init__(self, resolution: int = 224, seed: int | None = None) -> None:
        self.resolution = resolution
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from samclip.data.clip_stream import clip_train_transform

        return clip_train_transform(image.convert("RGB"), self.resolution, self.rng)


def create_model_and_transforms(
    name: str,
    pretrained: str | Path | None = None,
    *,
    sam_checkpoint: str | Path | None = None,
    resolution: int = 224,
    device: str | torch.device = "cpu",
) -> tuple[
    MergedSamClip | SamClipModel, Callable[[Image.Image], torch.Tensor], Callable[[Image.Image], torch.Tensor]
]:
    """``(model, preprocess_train, preprocess_val)`` as open_clip returns them.

    With ``pretrained`` (a stage's final.pt, an export directory or a Hub repo id) the model is the merged
    model with its text tower, and must be of size ``name``; without it, a fresh ``SamClipModel`` (from an
    official SAM file when ``sam_checkpoint`` is given). The transforms give float images in [0, 1]: the
    model normalises its input itself.
    """
    from samclip.data.transforms import classification_transform

    if pretrained is None:
        model: MergedSamClip | SamClipModel = create_model(name, sam_checkpoint=sam_checkpoint).to(device)
    else:
        if sam_checkpoint is not None:
            raise ValueError("give pretrained (merged weights) or sam_checkpoint (SAM weights), not both")
        model = from_pretrained(pretrained, device=device)
        if name not in MODEL_CONFIGS:
            raise ValueError(f"unknown model {name!r}; available: {list_models()}")
        if model.config != MODEL_CONFIGS[name]:
            raise ValueError(
                f"{pretrained} holds a {model_name(model.config) or 'custom'} model, not {name!r}"
            )
    return model, TrainTransform(resolution), classification_transform(resolution)


def get_tokenizer(name_or_path: str | Path) -> Callable[[Sequence[str]], torch.Tensor]:
    """The text tower's tokenizer: recorded in a final.pt / export directory, else an open_clip model name."""
    from samclip.models.teachers import open_clip_tokenizer

    path = Path(name_or_path)
    if path.is_dir() and (path / "config.json").is_file():
        return open_clip_tokenizer(json.loads((path / "config.json").read_text())["tokenizer"])
    if path.is_file():
        from samclip.models.final_checkpoint import load_final_checkpoint

        return open_clip_tokenizer(load_final_checkpoint(path).clip_teacher.model_name)
    return open_clip_tokenizer(str(name_or_path))


def from_pretrained(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    *,
    allow_hub: bool = False,
) -> MergedSamClip:
    """A merged model from a local final.pt / export directory, or from a Hub repo holding an export.

    The export's ``config.json`` is validated before anything is built; a text model it names on a hub
    (``hf-hub:...``) is fetched only with ``allow_hub=True``.
    """
    from samclip.serve.merged import load

    path = Path(name_or_path)
    if path.exists():
        return load(path, device=device, allow_hub=allow_hub)
    if str(name_or_path).count("/") != 1 or str(name_or_path).startswith((".", "/")):
        raise FileNotFoundError(
            f"{name_or_path} is neither a local checkpoint/export nor a Hub repo id (owner/name)"
        )
    from huggingface_hub import snapshot_download

    return load(snapshot_download(str(name_or_path), revision=revision), device=device, allow_hub=allow_hub)


def push_to_hub(
    merged: MergedSamClip,
    repo_id: str,
    *,
    run_dir: str | Path | None = None,
    results: Sequence[str | Path] = (),
    private: bool = False,
    token: str | None = None,
) -> str:
    """Upload ``save_pretrained`` output plus a model card (from ``run_dir`` and eval ``results``); returns the URL."""
    import tempfile

    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as folder:
        merged.save_pretrained(folder)
        write_model_card(folder, run_dir=run_dir, results=results)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="samclip export")
    return str(getattr(commit, "commit_url", commit))


def write_model_card(
    directory: str | Path, *, run_dir: str | Path | None = None, results: Sequence[str | Path] = ()
) -> Path:
    """``directory/README.md``: the model, how it was trained (the run's recipe and last metrics) and its
    evaluation results, so an export says what it is."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    lines = [
        "---",
        "library_name: samclip",
        "tags: [samclip, sam, clip, segmentation, zero-shot]",
        "license: apache-2.0",
        "---",
        "",
        f"# {model_name(SamClipConfig.from_dict(config['model_config'])) or 'SAM-CLIP'} (samclip)",
        "",
        "A SAM image encoder merged with CLIP by multi-task distillation (the SAM-CLIP recipe), with a CLIP head "
        f"and SAM's prompt encoder + mask decoder. Text tower: `{config['text_model']}` (frozen CLIP teacher).",
        "",
        "```python",
        "import samclip",
        f'merged = samclip.from_pretrained("{directory.name}")',
        "```",
    ]
    if run_dir is not None:
        lines += ["", "## Training", "", *_recipe_lines(Path(run_dir))]
    for path in results:
        lines += ["", f"## Evaluation: {Path(path).parent.name}", "", *_results_lines(Path(path))]
    card = directory / MODEL_CARD
    card.write_text("\n".join(lines) + "\n")
    return card


def _recipe_lines(run_dir: Path) -> list[str]:
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} does not exist: run_dir must be a samclip-train run directory"
        )
    config: dict[str, Any] = OmegaConf.to_container(OmegaConf.load(config_path))  # type: ignore[assignment]
    lines = ["| stage | trainable | lr | steps | last loss |", "|---|---|---|---|---|"]
    for name in config.get("stages", []):
        stage = config.get("stage", {}).get(name, {})
        last = _last_metrics(run_dir / name / "metrics.jsonl")
        lines.append(
            f"| {name} | {', '.join(stage.get('trainable', []))} | {stage.get('lr')} | "
            f"{last.get('step', '-')} | {_fmt(last.get('loss'))} |"
        )
    loss = config.get("loss", {})
    data = config.get("data", {})
    lines += [
        "",
        f"Loss: L_clip x {loss.get('clip_weight')} + L_sam x {loss.get('sam_weight')}. "
        f"D_CLIP: `{data.get('clip', {}).get('urls')}`; D_SAM: `{data.get('sam', {}).get('urls')}`.",
    ]
    return lines


def _results_lines(path: Path) -> list[str]:
    results = json.loads(path.read_text())
    numbers = {key: value for key, value in results.items() if isinstance(value, int | float)}
    return [
        "| metric | value |",
        "|---|---|",
        *(f"| {key} | {_fmt(value)} |" for key, value in numbers.items()),
    ]


def _last_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        try:
            last = json.loads(line)
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
    return last


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
