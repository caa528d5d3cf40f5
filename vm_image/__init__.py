"""Cove's guest image: the recipe (`recipe`) and the builder (`builder`).

`python -m vm_image build [--arch amd64|arm64]` (also `cove image build`) builds the
image into ``$COVE_HOME/images/<key>/`` or reuses the cached one.
"""

from vm_image.builder import BuildError, Image, build, find_image, latest_image

__all__ = ["BuildError", "Image", "build", "find_image", "latest_image"]
