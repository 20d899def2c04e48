#!/usr/bin/python3
"""Trains the default model's VQ tokenizer: LlamaGen's VQ architecture, smaller.

  usage: tools/train_vq.py --data build/emoji/dataset.npz --out build/train/vq.pt
         [--steps 1500] [--batch 32] [--seed 0] [--threads 2]

Loss: L1 + L2 on pixels plus the codebook and commitment terms of the l2-normalised
quantizer (upstream adds a perceptual and a GAN loss; neither is needed for flat-coloured
64x64 emoji, and both would need weights or time this machine does not have). Held-out
images (the dataset's heldout flag) are never seen. The same seed and thread count give
the same weights. Writes {"model": state_dict, "config": {...}}, the official layout.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamagen_modules import VQModel  # noqa: E402

CONFIG = {"codebook_size": 1024, "codebook_embed_dim": 8, "ch": 32, "ch_mult": [1, 1, 2, 4],
          "num_res_blocks": 1, "z_channels": 64}


def to_tensor(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def lr_at(step, steps, peak, warmup=100):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def psnr(a, b):
    """Mean PSNR in dB over images given in [-1, 1]."""
    mse = ((a.clamp(-1, 1) - b) ** 2).mean(dim=(1, 2, 3)) / 4.0   # on a [0, 1] scale
    return float((-10 * torch.log10(mse.clamp_min(1e-10))).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    data = np.load(a.data)
    heldout = data["heldout"]
    train = to_tensor(data["images"][~heldout])
    test = to_tensor(data["images"][heldout])
    print("train %d images, held out %d" % (len(train), len(test)), flush=True)

    model = VQModel(**CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(a.seed)
    start = time.time()
    for step in range(a.steps):
        idx = torch.randint(0, len(train), (a.batch,), generator=gen)
        x = train[idx]
        flip = torch.rand(a.batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr)
        y, codes, vq_loss = model(x)
        loss = F.l1_loss(y, x) + F.mse_loss(y, x) + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == a.steps - 1:
            print("step %5d  loss %.4f  batch psnr %.2f dB  codes used %d  %.0f s"
                  % (step, loss.item(), psnr(y.detach(), x), len(torch.unique(codes)),
                     time.time() - start), flush=True)

    model.eval()
    with torch.no_grad():
        rec = torch.cat([model(test[i:i + 64])[0] for i in range(0, len(test), 64)])
        used = torch.cat([model.encode(train[i:i + 256])[1].flatten()
                          for i in range(0, len(train), 256)])
    print("held-out reconstruction PSNR %.2f dB; %d of %d codes used on the training set"
          % (psnr(rec, test), len(torch.unique(used)), CONFIG["codebook_size"]), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    torch.save({"model": model.state_dict(), "config": CONFIG, "args": vars(a)}, a.out)
    print("wrote %s (%.0f s)" % (a.out, time.time() - start))


if __name__ == "__main__":
    main()
