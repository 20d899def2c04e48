#!/usr/bin/python3
"""Trains the small emoji classifier that scores the default model's images.

  usage: tools/train_classifier.py --data build/emoji/dataset.npz
         --out models/emoji-64/eval/classifier.safetensors [--epochs 24] [--seed 0]

A plain CNN (four conv stages, global average pool, linear), trained on every image of
the dataset under random shifts, scales, blur, noise and colour changes, so that it names
the emoji in a picture that is not pixel-exact, as a generated one is not. Its held-out
accuracy is measured on fresh augmentations the training never drew (another seed),
and on the clean images. The same seed and thread count give the same weights.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stfile  # noqa: E402
from train_vq import lr_at, to_tensor  # noqa: E402

WIDTHS = (16, 32, 64, 128)


class Classifier(nn.Module):
    def __init__(self, num_classes, widths=WIDTHS):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        """x [B, 3, H, W] in [-1, 1] -> logits [B, num_classes]."""
        return self.head(self.features(x).mean(dim=(2, 3)))


def load_classifier(path):
    weights, meta = stfile.load(path, with_metadata=True)
    model = Classifier(int(meta["num_classes"]))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in weights.items()},
                                                strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError("%s: does not match the classifier (missing %s, unexpected %s)"
                         % (path, missing, unexpected))
    return model.eval()


def augment(x, gen):
    """Random affine (shift up to 8 px, scale 0.8-1.1, small rotation) over a white
    fill, then maybe blur, then colour and noise."""
    b = x.shape[0]
    def rand(lo, hi):
        return lo + (hi - lo) * torch.rand(b, generator=gen)
    scale, angle = rand(0.8, 1.1), rand(-0.15, 0.15)
    tx, ty = rand(-0.25, 0.25), rand(-0.25, 0.25)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros",
                      align_corners=False) - 1              # outside the image: -1 ...
    outside = F.grid_sample(torch.ones_like(x[:, :1]), grid, align_corners=False) < 0.5
    y = torch.where(outside, torch.ones_like(y), y)         # ... made white
    blur = (torch.rand(b, generator=gen) < 0.4)[:, None, None, None]
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
    y = torch.where(blur, F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), k, groups=3), y)
    gain = rand(0.85, 1.15)[:, None, None, None]
    shift = (rand(-0.1, 0.1))[:, None, None, None]
    y = y * gain + shift + 0.04 * torch.randn(y.shape, generator=gen)
    return y.clamp(-1, 1)


@torch.no_grad()
def accuracy(model, x, y, batch=256):
    top1 = top5 = 0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch])
        best = logits.topk(5, dim=1).indices
        top1 += int((best[:, 0] == y[i:i + batch]).sum())
        top5 += int((best == y[i:i + batch, None]).any(dim=1).sum())
    return top1 / len(x), top5 / len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    data = np.load(a.data)
    x = to_tensor(data["images"])
    y = torch.from_numpy(data["labels"]).long()
    num_classes = int(y.max()) + 1
    model = Classifier(num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(a.seed)
    steps = a.epochs * (len(x) // a.batch)
    start, step = time.time(), 0
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - a.batch + 1, a.batch):
            idx = order[i:i + a.batch]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, a.lr)
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        print("epoch %2d  loss %.3f  %.0f s" % (epoch, loss.item(), time.time() - start),
              flush=True)

    model.eval()
    held = torch.Generator().manual_seed(a.seed + 1000)   # views training never drew
    fresh = augment(x, held)
    aug1, aug5 = accuracy(model, fresh, y)
    clean1, _ = accuracy(model, x, y)
    print("held-out augmented views: top-1 %.3f, top-5 %.3f; clean images: top-1 %.3f"
          % (aug1, aug5, clean1))
    meta = {"num_classes": str(num_classes), "widths": json.dumps(WIDTHS),
            "heldout_top1": "%.4f" % aug1, "heldout_top5": "%.4f" % aug5,
            "clean_top1": "%.4f" % clean1, "seed": str(a.seed), "epochs": str(a.epochs)}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    stfile.save(a.out, {k: v.detach().half() for k, v in model.state_dict().items()
                        if v.is_floating_point()}, metadata=meta)   # fp16 halves the file
    print("wrote %s (%.0f s)" % (a.out, time.time() - start))


if __name__ == "__main__":
    main()
