#!/usr/bin/env bash
# Regenerates docs/gallery/: every picture comes from one of the README's commands, run on the smoke run's
# tiny random models (experiment=smoke) and on images of the proxy world of coloured shapes.
#   bash scripts/gallery.sh [WORK_DIR]      (about 5 minutes on 2 CPU cores)
set -euo pipefail
work=${1:-runs/gallery}
out=docs/gallery
mkdir -p "$out" "$work"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# The smoke run: three stages, each writing curves.png.
samclip-train experiment=smoke run_dir="$work/smoke" logger.progress=false
for stage in head_probe multitask res_adapt; do cp "$work/smoke/$stage/curves.png" "$out/curves_$stage.png"; done
final="$work/smoke/res_adapt/final.pt"

# Images to look at: the proxy world's shapes, in the real layouts (D_CLIP shards, SA-1B tars, a VOC tree).
[ -d "$work/shapes/voc" ] || samclip-data synth --world shapes --size test --out "$work/shapes" --seed 0
photo=$(ls "$work"/shapes/voc/*/JPEGImages/*.jpg | head -n 1)
labels="background,circle,square,triangle,cross"

samclip-data preview sam "$work/shapes/sam" --out "$out/preview_sam.png" --num-images 4 --resolution 256 \
  --masks-per-image 6 --max-points 2
samclip-data preview clip "$work/shapes/clip" --out "$out/preview_clip.png" --num-images 8 --resolution 128

samclip-predict "$photo" --checkpoint "$final" --boxes "40,40,200,200;10,150,90,240" --out "$out/predict_boxes.png"
samclip-predict "$photo" --checkpoint "$final" --points "128,128;60,200" --out "$out/predict_points.png"
samclip-predict "$photo" --checkpoint "$final" --labels "$labels" --mode composed --threshold 0.2 \
  --out "$out/predict_composed.png"
samclip-predict "$photo" --checkpoint "$final" --everything --labels "$labels" --out "$out/predict_everything.png"

# Wise-FT: the multitask and res_adapt endpoints interpolated, zero-shot accuracy at each alpha.
samclip-eval eval=wiseft checkpoint="$final" eval.checkpoint_a="$work/smoke/multitask/final.pt" \
  run_dir="$work/eval/wiseft" '~eval.tasks.instseg_coco' eval.tasks.zeroshot_cls.layout=imagefolder \
  eval.tasks.zeroshot_cls.root="$work/shapes/classification" eval.tasks.zeroshot_cls.classnames=null \
  'eval.tasks.zeroshot_cls.resolutions=[64]'
cp "$work/eval/wiseft/wiseft.png" "$out/wiseft.png"

ls -l "$out"/*.png
