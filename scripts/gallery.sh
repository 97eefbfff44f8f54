#!/usr/bin/env bash
# Regenerates docs/gallery/ with the README's commands: the smoke run's curves, and every other picture from
# the proxy study at its test size (tiny teachers samclip trains on a world of coloured shapes, and the
# merged model distilled from them), on held-out images of that world.
#   bash scripts/gallery.sh [WORK_DIR]      (about 25 minutes on 2 shared CPU cores, almost all of it the proxy study)
set -euo pipefail
work=${1:-runs/gallery}
out=docs/gallery
mkdir -p "$out" "$work"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# The smoke run (tiny random teachers): three stages, each writing curves.png.
samclip-train experiment=smoke run_dir="$work/smoke" logger.progress=false
for stage in head_probe multitask res_adapt; do cp "$work/smoke/$stage/curves.png" "$out/curves_$stage.png"; done

# The proxy study: its world, its teachers, the three stages (skipped when already done).
[ -f "$work/proxy/results.json" ] || samclip-proxy --out "$work/proxy" --size test
world="$work/proxy/world"
final="$work/proxy/seed_0/recipe/res_adapt/final.pt"
labels="background,circle,square,triangle,cross"

samclip-data preview sam "$world/sam" --out "$out/preview_sam.png" --num-images 4 --resolution 256 \
  --masks-per-image 6 --max-points 2
samclip-data preview clip "$world/clip" --out "$out/preview_clip.png" --num-images 8 --resolution 128

# One held-out VOC-tree image, upscaled 4x so the overlays' legends and prompt marks are legible.
photo="$work/photo.png"
python -c "import sys; from PIL import Image; i = Image.open(sys.argv[1]); i.resize((4 * i.width, 4 * i.height)).save(sys.argv[2])" \
  "$world/voc/VOC2012/JPEGImages/proxy_000000.jpg" "$photo"
samclip-predict "$photo" --checkpoint "$final" --boxes "120,45,460,385;560,5,730,170" --out "$out/predict_boxes.png"
samclip-predict "$photo" --checkpoint "$final" --points "290,210;640,85" --out "$out/predict_points.png"
samclip-predict "$photo" --checkpoint "$final" --labels "$labels" --mode clip --out "$out/predict_clip_head.png"
samclip-predict "$photo" --checkpoint "$final" --labels "$labels" --mode composed --threshold 0.3 \
  --out "$out/predict_composed.png"
samclip-predict "$photo" --checkpoint "$final" --everything --labels "$labels" --points-per-side 16 \
  --pred-iou-thresh 0 --stability-score-thresh 0 --out "$out/predict_everything.png"

# Wise-FT: the SAM teacher (α = 0) interpolated towards the merged model (α = 1), zero-shot accuracy at each α.
samclip-eval eval=wiseft checkpoint="$final" eval.checkpoint_a="$work/proxy/teachers/sam_proxy.pth" \
  run_dir="$work/eval/wiseft" '~eval.tasks.instseg_coco' eval.tasks.zeroshot_cls.root="$world/classification" \
  'eval.tasks.zeroshot_cls.resolutions=[128]'
cp "$work/eval/wiseft/wiseft.png" "$out/wiseft.png"

# Keep each picture under 300 kB: a 256-colour palette where the full-colour PNG is larger.
python - "$out" <<'EOF'
import sys
from pathlib import Path

from PIL import Image

for path in sorted(Path(sys.argv[1]).glob("*.png")):
    if path.stat().st_size > 300_000:
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    print(f"{path.stat().st_size // 1000:4d} kB  {path}")
EOF
