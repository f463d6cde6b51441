#!/usr/bin/env python3
"""Writes the small image files of Loom's image-format tests with numpy and zlib.

  images.npz             np.savez: x uint8 [6, 5, 4, 3] (channels last), y int64 [6]
  images_compressed.npz  np.savez_compressed: images float32 [6, 3, 5, 4], labels int32 [6]
  x.npy, y.npy           the first pair as two .npy files
  png/<class>/<n>.png    2 classes (cat, dog) x 3 RGB images of 5x4, written by hand (zlib)
  expected.json          every value above, as the tests expect to read them

    python3 scripts/gen_image_fixtures.py Tests/LoomDataTests/Fixtures/images
"""
import json
import os
import struct
import sys
import zlib

import numpy as np


def png(path, rgb):  # rgb: uint8 [H, W, 3]
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0, 2], dtype=np.int64)
    np.savez(os.path.join(out, "images.npz"), x=x, y=y)
    np.save(os.path.join(out, "x.npy"), x)
    np.save(os.path.join(out, "y.npy"), y)
    f = rng.standard_normal((6, 3, 5, 4)).astype(np.float32)
    labels = np.array([3, 0, 1, 2, 3, 0], dtype=np.int32)
    np.savez_compressed(os.path.join(out, "images_compressed.npz"), images=f, labels=labels)
    pngs = {}
    for c, name in enumerate(["cat", "dog"]):
        os.makedirs(os.path.join(out, "png", name), exist_ok=True)
        for n in range(3):
            img = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
            png(os.path.join(out, "png", name, f"{n}.png"), img)
            pngs[f"{name}/{n}.png"] = img.transpose(2, 0, 1).reshape(-1).tolist()  # [C, H, W]
    json.dump({"x_nchw": x.transpose(0, 3, 1, 2).reshape(-1).tolist(), "y": y.tolist(),
               "f": f.reshape(-1).tolist(), "labels": labels.tolist(), "png": pngs}, open(os.path.join(out, "expected.json"), "w"))


if __name__ == "__main__":
    main()
