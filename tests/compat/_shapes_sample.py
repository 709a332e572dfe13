"""A Matterport "shapes" sample, written as a Matterport script is (only the imports changed).

Tiny on purpose (64 x 64 images, ResNet-18, a few steps) so that CI trains it in seconds.
"""

from __future__ import annotations

import math
import random

import numpy as np

from maskrcnn.compat.mrcnn import config, utils


class ShapesConfig(config.Config):
    NAME = "shapes"
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 1 + 3  # background + square, circle, triangle
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    TRAIN_ROIS_PER_IMAGE = 16
    STEPS_PER_EPOCH = 4
    VALIDATION_STEPS = 1
    BACKBONE = "resnet18"
    TOP_DOWN_PYRAMID_SIZE = 16
    FPN_CLASSIF_FC_LAYERS_SIZE = 32
    POST_NMS_ROIS_TRAINING = 64
    POST_NMS_ROIS_INFERENCE = 32
    MINI_MASK_SHAPE = (28, 28)


class InferenceConfig(ShapesConfig):
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1
    DETECTION_MIN_CONFIDENCE = 0.0  # the tiny model is barely trained: keep what it finds


class ShapesDataset(utils.Dataset):
    """Squares, circles and triangles on a plain background (Matterport's sample, numpy drawing)."""

    def load_shapes(self, count: int, height: int, width: int) -> None:
        self.add_class("shapes", 1, "square")
        self.add_class("shapes", 2, "circle")
        self.add_class("shapes", 3, "triangle")
        for i in range(count):
            bg_color, shapes = self.random_image(height, width)
            self.add_image("shapes", image_id=i, path=None, width=width, height=height, bg_color=bg_color, shapes=shapes)

    def load_image(self, image_id: int) -> np.ndarray:
        info = self.image_info[image_id]
        image = np.ones([info["height"], info["width"], 3], dtype=np.uint8) * np.array(info["bg_color"], dtype=np.uint8)
        for shape, color, dims in info["shapes"]:
            image[self.draw_shape(info["height"], info["width"], shape, dims)] = color
        return image

    def image_reference(self, image_id: int) -> str:
        info = self.image_info[image_id]
        if info["source"] == "shapes":
            return str(info["shapes"])
        return super().image_reference(image_id)

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.image_info[image_id]
        shapes = info["shapes"]
        mask = np.zeros([info["height"], info["width"], len(shapes)], dtype=np.uint8)
        for i, (shape, _, dims) in enumerate(shapes):
            mask[:, :, i] = self.draw_shape(info["height"], info["width"], shape, dims)
        # later shapes occlude earlier ones
        occlusion = np.logical_not(mask[:, :, -1]).astype(np.uint8)
        for i in range(len(shapes) - 2, -1, -1):
            mask[:, :, i] = mask[:, :, i] * occlusion
            occlusion = np.logical_and(occlusion, np.logical_not(mask[:, :, i]))
        class_ids = np.array([self.class_names.index(s[0]) for s in shapes])
        return mask.astype(bool), class_ids.astype(np.int32)

    @staticmethod
    def draw_shape(height: int, width: int, shape: str, dims: tuple[int, int, int]) -> np.ndarray:
        x, y, s = dims
        yy, xx = np.mgrid[:height, :width]
        if shape == "square":
            return (abs(xx - x) <= s) & (abs(yy - y) <= s)
        if shape == "circle":
            return (xx - x) ** 2 + (yy - y) ** 2 <= s * s
        # triangle pointing up: apex (x, y - s), base at y + s * sin(60)
        base = y + s * math.sin(math.radians(60))
        return (yy >= y - s) & (yy <= base) & (abs(xx - x) <= (yy - (y - s)) / math.sqrt(3))

    def random_shape(self, height: int, width: int) -> tuple[str, tuple[int, ...], tuple[int, int, int]]:
        shape = random.choice(["square", "circle", "triangle"])
        color = tuple(random.randint(0, 255) for _ in range(3))
        buffer = 12
        y = random.randint(buffer, height - buffer - 1)
        x = random.randint(buffer, width - buffer - 1)
        s = random.randint(6, height // 6)
        return shape, color, (x, y, s)

    def random_image(self, height: int, width: int) -> tuple[np.ndarray, list]:
        bg_color = np.array([random.randint(0, 255) for _ in range(3)])
        shapes = [self.random_shape(height, width) for _ in range(random.randint(1, 3))]
        return bg_color, shapes


def shapes_datasets(train: int = 6, val: int = 2, seed: int = 0) -> tuple[ShapesDataset, ShapesDataset]:
    random.seed(seed)
    dataset_train = ShapesDataset()
    dataset_train.load_shapes(train, 64, 64)
    dataset_train.prepare()
    dataset_val = ShapesDataset()
    dataset_val.load_shapes(val, 64, 64)
    dataset_val.prepare()
    return dataset_train, dataset_val
