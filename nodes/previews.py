"""Live previews for the sampler's progress bar: when to make one, and the image to show.

Plain Python (no ComfyUI import): the sampler asks ``PreviewPacer.due`` after each step and
ComfyUI's progress bar shows what ``preview_image`` returns.
"""
from __future__ import annotations

import time

import numpy as np
from PIL import Image

class PreviewPacer:
    """Previews as often as every step, while their own time stays within ``budget`` of the
    sampling time so far (a preview decodes an image: on a large model it costs several steps).

    The first preview comes after the first step; its measured cost then spaces the next ones.
    """

    # 5 %: the pacer times the decode; ComfyUI then encodes and sends the JPEG on its own thread,
    # and the first preview is made before its cost is known. The target is 10 % in all.
    def __init__(self, budget: float = 0.05, clock=time.perf_counter):
        self.budget, self.clock = budget, clock
        self.start = clock()
        self.spent = 0.0
        self.last_cost = 0.0
        self.count = 0

    def due(self, step: int, steps: int) -> bool:
        if step + 1 >= steps:  # after the last step the result itself is shown
            return False
        sampling = self.clock() - self.start - self.spent
        return self.spent + self.last_cost <= self.budget * sampling

    def timed(self, make):
        t0 = self.clock()
        out = make()
        self.last_cost = self.clock() - t0
        self.spent += self.last_cost
        self.count += 1
        return out


def preview_image(image, side: int) -> Image.Image:
    """(H, W, 3) float tensor in [0, 1] -> a PIL image enlarged pixel for pixel by the largest whole
    factor that fits ``side`` (ComfyUI's --preview-size): ComfyUI fits previews to that size
    bilinearly, which would blur the embedded model's 28 px images into grey blobs."""
    pixels = (np.asarray(image.float().clamp(0, 1).numpy()) * 255 + 0.5).astype(np.uint8)
    picture = Image.fromarray(pixels)
    factor = max(1, side // max(picture.size))
    return picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST) if factor > 1 else picture
