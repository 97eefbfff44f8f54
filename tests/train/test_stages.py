"""A stage's streams are a config value: specs found by stream name in STREAM_SPECS, each checking its own keys."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from samclip.train import builder
from samclip.train.config_checks import require_number
from samclip.train.runner import CONFIG_DIR
from samclip.train.stages import (
    STREAM_SPECS,
    ClipStreamSpec,
    InstanceStreamSpec,
    SamStreamSpec,
    Stage,
    StreamContext,
    StreamSpec,
    TermPlan,
)


@dataclass(frozen=True)
class DepthStreamSpec(StreamSpec):
    """A toy stream: depth maps of side ``resolution``, ``batch_size`` a step."""

    resolution: int
    batch_size: int

    def check_values(self, key: str) -> None:
        require_number(f"{key}.batch_size", self.batch_size, minimum=1, integer=True)

    def validate(self, key: str, context: StreamContext) -> None:
        if self.resolution % context.patch_size:
            raise ValueError(f"{key}.resolution: {self.resolution} is not a multiple of {context.patch_size}")

    def stream_kwargs(self) -> dict[str, Any]:
        return {"image_size": self.resolution, "global_batch_size": self.batch_size}


@pytest.fixture
def depth_stream() -> Iterator[None]:
    STREAM_SPECS.register("depth")(DepthStreamSpec)
    yield
    del STREAM_SPECS._entries["depth"]  # the registry has no unregister; the other tests must not see it


def _stage_node(name: str, **overrides: Any) -> dict[str, Any]:
    """``configs/stage/<name>.yaml`` as a plain dict (``_target_`` and all), with ``overrides`` merged in."""
    node = OmegaConf.load(CONFIG_DIR / "stage" / f"{name}.yaml")
    return OmegaConf.to_container(OmegaConf.merge(node, overrides))


def _config(name: str, **overrides: Any) -> dict[str, Any]:
    """The stage's config as Stage's keywords: a plain dict, the stream specs as mappings (no ``_target_``)."""
    node = _stage_node(name, **overrides)
    for stream in STREAM_SPECS:
        if isinstance(node.get(stream), dict):
            node[stream].pop("_target_", None)
    return {key: value for key, value in node.items() if not key.startswith("_")}


def _literal(text: str) -> str:
    return re.escape(text)


def test_the_yaml_schema_builds_the_streams_mapping() -> None:
    multitask = instantiate(_stage_node("multitask"))
    assert list(multitask.streams) == ["clip", "sam"]
    assert multitask.streams["clip"] == ClipStreamSpec([224, 448], 2048, 224)
    assert multitask.stream("sam") == SamStreamSpec(1024, 32, 32) == multitask.sam  # the old attribute too
    assert multitask.stream("instances") is None and multitask.instances is None
    dropped = instantiate(_stage_node("multitask", sam=None))
    assert list(dropped.streams) == ["clip"] and dropped.sam is None
    clip2sam = instantiate(_stage_node("clip2sam"))
    assert clip2sam.streams == {"instances": InstanceStreamSpec(1024, 16, 16)}
    # streams= and one keyword per stream build the same stage; dataclasses.replace goes through streams=.
    again = Stage(**_config("multitask"))
    assert again == multitask == dataclasses.replace(multitask)
    assert Stage(**{**dataclasses.asdict(multitask), "streams": dict(multitask.streams)}) == multitask


def test_a_registered_stream_spec_is_carried_and_validated(depth_stream: None) -> None:
    node = _stage_node("res_adapt", depth={"resolution": 48, "batch_size": 4})
    stage = builder.build_stage(OmegaConf.create({"stage": {"res_adapt": node}}), "res_adapt")
    assert list(stage.streams) == ["clip", "depth"]
    assert stage.stream("depth") == DepthStreamSpec(48, 4) == stage.depth
    assert stage.streams["depth"].stream_kwargs() == {"image_size": 48, "global_batch_size": 4}
    assert Stage(**{**_config("res_adapt"), "depth": DepthStreamSpec(48, 4)}) == stage
    # A term on the new stream counts as read: training its module is allowed, weight 0 is not.
    terms = [TermPlan("depth", "depth", 1.0, "depth_head", "loss.depth_weight")]
    stage.validate(trainable_names=["depth_head.w"], terms=terms, world_size=2, patch_size=16)
    with pytest.raises(
        ValueError, match=_literal("stage.res_adapt.depth.resolution: 48 is not a multiple of 32")
    ):
        stage.validate(trainable_names=[], terms=[], world_size=1, patch_size=32)
    with pytest.raises(
        ValueError, match=_literal("loss.depth_weight is 0 but stage res_adapt trains depth_head")
    ):
        stage.validate(
            trainable_names=["depth_head.w"],
            terms=[dataclasses.replace(terms[0], weight=0.0)],
            world_size=1,
            patch_size=16,
        )
    with pytest.raises(ValueError, match=_literal("stage.res_adapt.depth.batch_size must be >= 1, got 0")):
        Stage(**_config("res_adapt", depth={"resolution": 48, "batch_size": 0}))
    only_depth = Stage(**_config("res_adapt", clip=None, depth={"resolution": 48, "batch_size": 4}))
    assert list(only_depth.streams) == ["depth"]


@pytest.mark.parametrize(
    ("stage", "overrides", "message"),
    [
        ("multitask", {"clip": {"batch_size": 0}}, "stage.multitask.clip.batch_size must be >= 1, got 0"),
        ("multitask", {"clip": {"base_resolution": 0}}, "stage.multitask.clip.base_resolution must be >= 1"),
        (
            "multitask",
            {"clip": {"resolutions": [224, 4.5]}},
            "stage.multitask.clip.resolutions must be an integer",
        ),
        (
            "multitask",
            {"sam": {"batch_size": 2.5}},
            "stage.multitask.sam.batch_size must be an integer, got 2.5",
        ),
        ("multitask", {"sam": {"resolution": 0}}, "stage.multitask.sam.resolution must be >= 1, got 0"),
        ("multitask", {"sam": {"masks_per_image": 0}}, "stage.multitask.sam.masks_per_image must be >= 1"),
        (
            "clip2sam",
            {"instances": {"max_instances": 0}},
            "stage.clip2sam.instances.max_instances must be >= 1",
        ),
        (
            "multitask",
            {"clip": None, "sam": None},
            "stage.multitask: a stage needs at least one of the streams",
        ),
        ("multitask", {"dino": {"resolution": 224}}, "stage.multitask.dino: unknown stream 'dino'"),
    ],
)
def test_bad_stream_values_name_their_key(stage: str, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=_literal(message)):  # the YAML form, as the trainer builds it
        builder.build_stage(OmegaConf.create({"stage": {stage: _stage_node(stage, **overrides)}}), stage)
    with pytest.raises(ValueError, match=_literal(message)):  # a plain config dict, specs as mappings
        Stage(**_config(stage, **overrides))


def test_a_spec_given_as_a_mapping_names_its_key_for_an_unknown_value() -> None:
    with pytest.raises(
        ValueError, match=_literal("stage.multitask.sam: SamStreamSpec.__init__() got an unexpected")
    ):
        Stage(**_config("multitask", sam={"masks": 3}))


@pytest.mark.parametrize(
    ("stage", "overrides", "world_size", "message"),
    [
        ("res_adapt", {"clip": {"resolutions": [224, 450]}}, 1, "stage.res_adapt.clip.resolutions: 450 is not a "
         "multiple of the patch size 16"),
        ("multitask", {"clip": {"batch_size": 2047}}, 2, "stage.multitask.clip.batch_size: 2047 images are not "
         "divisible by the world size 2"),
        ("res_adapt", {"clip": {"resolutions": [224]}}, 1, "stage.res_adapt.clip.sam_frame_resolutions: [1024] are "
         "not among stage.res_adapt.clip.resolutions [224]"),
        ("multitask", {"clip": {"batch_size": 8, "resolutions": [448]}}, 4, "stage.multitask.clip: resolution 448: "
         "scaled global batch 2"),
        ("multitask", {"sam": {"resolution": 1000}}, 1, "stage.multitask.sam.resolution: 1000 is not a multiple of "
         "the patch size 16"),
        ("multitask", {"sam": {"batch_size": 30}}, 4, "stage.multitask.sam.batch_size: 30 images are not divisible "
         "by the world size 4"),
        ("multitask", {"sam": {"resolution": 512}}, 1, "stage.multitask.sam.resolution: 512 differs from the model's "
         "SAM frame 1024 (model samclip_vit_b)"),
        ("clip2sam", {"instances": {"batch_size": 6}}, 4, "stage.clip2sam.instances.batch_size: 6 images are not "
         "divisible by the world size 4"),
        ("clip2sam", {"instances": {"resolution": 512}}, 1, "stage.clip2sam.instances.resolution: 512 differs from "
         "the model's SAM frame 1024"),
    ],
)  # fmt: skip
def test_stream_validation_errors_name_their_key(
    stage: str, overrides: dict[str, Any], world_size: int, message: str
) -> None:
    built = instantiate(_stage_node(stage, **overrides))
    with pytest.raises(ValueError, match=_literal(message)):
        built.validate(
            trainable_names=[],
            terms=[],
            world_size=world_size,
            patch_size=16,
            image_size=1024,
            model_name="samclip_vit_b",
        )


def test_a_trained_module_needs_its_stream() -> None:
    stage = instantiate(_stage_node("multitask", sam=None))
    terms = [TermPlan("sam", "sam", 10.0, "sam_head", "loss.sam_weight")]
    with pytest.raises(
        ValueError,
        match=_literal(
            "stage.multitask.trainable: sam_head is trainable but the stage has no sam stream "
            "(stage.multitask.sam is null)"
        ),
    ):
        stage.validate(trainable_names=["sam_head.w"], terms=terms, world_size=1, patch_size=16)
