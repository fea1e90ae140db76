"""Explanations of a trained PIP-Net (Nauta et al., CVPR 2023).

- `global_view`: each relevant prototype's top-k training patches; the scoring sheet picture.
- `local_view`: one image's top classes, contributing prototypes, boxes and patches.
- `report`: a self-contained HTML index; `builder.write_explanations` does all of it.
"""
from pipnet_tf.explain.builder import build_global, explain_images, write_explanations  # noqa: F401
