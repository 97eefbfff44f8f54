"""Qualitative panels: titled input | prediction | ground truth, with a legend of the classes shown."""

from __future__ import annotations

import numpy as np
from PIL import Image

from samclip.eval.visualize import class_palette, colorize, draw_legend, overlay, save_segmentation_panel


def test_panel_is_titled_and_has_a_legend_of_the_classes_present(tmp_path):
    image = np.full((120, 160, 3), 128, np.uint8)
    prediction = np.zeros((120, 160), np.int64)
    prediction[60:, 80:] = 2
    target = np.zeros_like(prediction)
    target[:, :40] = 1
    palette = class_palette(4)
    save_segmentation_panel(
        tmp_path / "p.png", image, prediction, target, palette, ["bg", "cat", "dog", "cow"]
    )
    panel = np.asarray(Image.open(tmp_path / "p.png"))
    band = panel.shape[0] - 120
    assert panel.shape[1] == 3 * 160 and band > 8  # three panels under a title band
    titles = panel[:band]
    for column in range(3):  # each title band is white with dark text
        strip = titles[:, column * 160 + 120 : (column + 1) * 160]
        assert (strip == 255).all()
        assert (titles[:, column * 160 : column * 160 + 60] < 128).any()
    assert np.array_equal(panel[band:, :160], image)
    assert np.array_equal(panel[band:, 320:], overlay(image, colorize(target, palette)))
    # The prediction panel carries the legend of the classes present in either map (not "cow"), in order.
    predicted = Image.fromarray(overlay(image, colorize(prediction, palette)))
    expected = draw_legend(predicted, ["bg", "cat", "dog"], [palette[0], palette[1], palette[2]])
    assert np.array_equal(panel[band:, 160:320], np.asarray(expected))
    assert not np.array_equal(panel[band:, 160:320], np.asarray(predicted))
