#!/usr/bin/python3
"""Trains the default model's class-conditional GPT over the trained VQ tokenizer's codes.

  usage: tools/train_gpt.py --data build/emoji/dataset.npz --vq build/train/vq.pt
         --out build/train/gpt.pt [--steps 1600] [--batch 64] [--seed 0] [--threads 2]

LlamaGen's c2i GPT (2D RoPE, RMSNorm, SwiGLU, a class token whose embedding table has a
null row for classifier-free guidance), smaller. Every image of the dataset is encoded
once with the frozen tokenizer and the GPT learns next-token prediction on those codes,
with the class dropped to the null row one time in ten as upstream does. The same seed
and thread count give the same weights. Writes {"model": state_dict}, the official layout.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamagen_modules import GPT, VQModel, gpt_checkpoint  # noqa: E402
from train_vq import lr_at, to_tensor  # noqa: E402

CONFIG = {"dim": 256, "n_layer": 6, "n_head": 4}


@torch.no_grad()
def encode_dataset(vq_path, images):
    ck = torch.load(vq_path, map_location="cpu")
    vq = VQModel(**ck["config"])
    vq.load_state_dict(ck["model"])
    vq.eval()
    x = to_tensor(images)
    return torch.cat([vq.encode(x[i:i + 256])[1] for i in range(0, len(x), 256)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--vq", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    data = np.load(a.data)
    labels = torch.from_numpy(data["labels"]).long()
    num_classes = int(labels.max()) + 1
    start = time.time()
    tokens = encode_dataset(a.vq, data["images"])
    vocab = torch.load(a.vq, map_location="cpu")["config"]["codebook_size"]
    print("encoded %d images to %s tokens, %d classes (%.0f s)"
          % (len(tokens), list(tokens.shape[1:]), num_classes, time.time() - start), flush=True)

    model = GPT(vocab, num_classes, tokens.shape[1], **CONFIG)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(a.seed)
    order = torch.randperm(len(tokens), generator=gen)
    pos = 0
    for step in range(a.steps):
        if pos + a.batch > len(order):   # epochs without replacement
            order, pos = torch.randperm(len(tokens), generator=gen), 0
        idx = order[pos:pos + a.batch]
        pos += a.batch
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr)
        logits = model(labels[idx], tokens[idx])
        loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[idx].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == a.steps - 1:
            print("step %5d  loss %.4f  %.0f s" % (step, loss.item(), time.time() - start),
                  flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    ck = gpt_checkpoint(model)
    ck["args"] = vars(a)
    torch.save(ck, a.out)
    print("wrote %s (%.0f s)" % (a.out, time.time() - start))


if __name__ == "__main__":
    main()
