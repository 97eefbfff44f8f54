"""Serving the merged model: loading it (``merged``), its text tower and classification, the SAM-style
``Predictor``, automatic masks, zero-shot segmentation, Open-Vocabulary SAM, the hub and the exports.

Nothing is imported here: ``import samclip`` takes the light modules it needs, and ``samclip.serve.merged``
(which imports open_clip, seconds) is imported only when a model is loaded.
"""
