"""``samclip-export``: the merged model as an official SAM checkpoint or as a self-contained samclip directory.

    samclip-export CKPT --format sam --out sam_vit_b_samclip.pth
    samclip-export CKPT --format samclip --out merged/
    samclip-export CKPT --format onnx --out onnx/ [--resolutions 224,1024]

CKPT is a stage's ``final.pt``, or a bare student state dict together with ``--model NAME`` (and, for
``--format samclip``, ``--clip-model``/``--clip-pretrained`` naming the text tower).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from samclip.cli_errors import pop_debug_flag, user_errors
from samclip.models import MODEL_CONFIGS
from samclip.models.ovsam import OvSamModel
from samclip.serve.export import export_sam, export_samclip, load_student
from samclip.serve.ovsam import OpenVocabularySam


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; user errors print one line and exit 2 (``--debug`` for the traceback)."""
    argv, debug = pop_debug_flag(list(sys.argv[1:] if argv is None else argv))
    with user_errors("samclip-export", debug=debug or None):
        export_cli(argv)


def export_cli(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="samclip-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a stage's final.pt, or a bare student state dict with --model")
    parser.add_argument("--format", choices=("sam", "samclip", "onnx"), required=True)
    parser.add_argument("--out", required=True, help="a .pth file (sam) or a directory (samclip, onnx)")
    parser.add_argument(
        "--resolutions",
        default=None,
        help="onnx: comma-separated encoder resolutions (default: the SAM frame)",
    )
    parser.add_argument(
        "--model", default=None, help=f"model name for a bare state dict: {sorted(MODEL_CONFIGS)}"
    )
    parser.add_argument("--clip-model", default=None, help="open_clip model name of the text tower")
    parser.add_argument("--clip-pretrained", default=None, help="open_clip tag or checkpoint file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    model, teacher = load_student(args.checkpoint, args.model, args.clip_model, args.clip_pretrained)
    if isinstance(model, OvSamModel):
        if args.format != "samclip":
            parser.error(
                f"{args.checkpoint} is an Open-Vocabulary SAM (a frozen CLIP encoder, no SAM image encoder): "
                "only --format samclip exports it"
            )
        OpenVocabularySam(model).save_pretrained(args.out)
    elif args.format == "sam":
        export_sam(model, args.out)
    elif args.format == "onnx":
        from samclip.serve.onnx_export import export_onnx  # imports torch.onnx only when asked

        resolutions = None if args.resolutions is None else [int(r) for r in args.resolutions.split(",")]
        export_onnx(model, args.out, resolutions)
    else:
        export_samclip(model, teacher, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
