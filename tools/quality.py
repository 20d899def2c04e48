#!/usr/bin/python3
"""Measures the default model: a grid for a fixed set of classes, scored by the classifier,
and the tokenizer's reconstruction PSNR on held-out images.

  usage: tools/quality.py [--model models/emoji-64] [--tessera build/tessera]
         [--classes 64] [--n 2] [--seed 0] [--grid docs/images/emoji-grid.png]
         [--json FILE] [--min-top1 F] [--min-top5 F] [--min-psnr DB]

1. Generation: `tessera generate` (the C engine, as a user runs it) draws --n images for
   each of --classes classes spread evenly over the class table (class i * C / classes),
   seeds S, S+1, ...; the classifier trained on the same dataset
   (eval/classifier.safetensors, tools/train_classifier.py) must name the requested
   class: top-1 and top-5 accuracy over all images, against chance 1/C and 5/C.
2. Reconstruction: the dataset's held-out images (never seen by the tokenizer), encoded
   with eval/vq_encoder.safetensors and decoded with the folder's decoder in PyTorch
   (the same math as the C decoder, tests/reference/llamagen_ref.py); mean PSNR in dB,
   and the classifier's top-1/top-5 on those reconstructions (the tokenizer's ceiling).
The dataset is rebuilt from the Debian packages when --data does not exist. With the
--min-* options the script exits 1 when a figure is below its threshold (the CI test).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import stfile  # noqa: E402
from llamagen_ref import VqDecoderRef  # noqa: E402
from llamagen_modules import Encoder, Quantizer  # noqa: E402
from train_classifier import load_classifier  # noqa: E402
from train_vq import psnr, to_tensor  # noqa: E402


def fixed_classes(num_classes, count):
    return [i * num_classes // count for i in range(count)]


def generate(tessera, model, classes, n, seed, threads, extra):
    """-> uint8 images [len(classes) * n, H, W, 3], class-major as the CLI writes them."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [tessera, "generate", "--model", model, "--class",
               ",".join(map(str, classes)), "--n", str(n), "--seed", str(seed),
               "--out", os.path.join(tmp, "img.png"), "--quiet"] + extra
        if threads:
            cmd += ["--threads", str(threads)]
        subprocess.run(cmd, check=True)
        count = len(classes) * n
        paths = ([os.path.join(tmp, "img.png")] if count == 1 else
                 [os.path.join(tmp, "img-%d.png" % i) for i in range(count)])
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


@torch.no_grad()
def classify(model_dir, images, labels):
    clf = load_classifier(os.path.join(model_dir, "eval", "classifier.safetensors"))
    logits = clf(to_tensor(images))
    best = logits.topk(5, dim=1).indices
    y = torch.as_tensor(labels)
    return (float((best[:, 0] == y).float().mean()),
            float((best == y[:, None]).any(dim=1).float().mean()),
            best[:, 0].tolist())


@torch.no_grad()
def reconstruct(model_dir, images):
    """Encode with the shipped encoder, quantize on the l2-normalised codebook, decode:
    -> (PSNR in dB, reconstructions in [-1, 1])."""
    with open(os.path.join(model_dir, "config.json")) as f:
        v = json.load(f)["vq"]
    decoder = VqDecoderRef(v, stfile.load(os.path.join(model_dir, v["file"])))
    enc_w = stfile.load(os.path.join(model_dir, "eval", "vq_encoder.safetensors"))
    encoder = Encoder(v["ch"], v["ch_mult"], v["num_res_blocks"], v["z_channels"])
    encoder.load_state_dict({k[len("encoder."):]: t.float() for k, t in enc_w.items()
                             if k.startswith("encoder.")})
    encoder.eval()
    qw, qb = enc_w["quant_conv.weight"].float(), enc_w["quant_conv.bias"].float()
    quantizer = Quantizer(v["codebook_size"], v["codebook_embed_dim"])
    quantizer.embedding.weight.data = decoder.w["quantize.embedding.weight"]
    x = to_tensor(images)
    _, codes, _ = quantizer(torch.nn.functional.conv2d(encoder(x), qw, qb))
    rec = decoder.decode(codes)
    return psnr(rec, x), rec.clamp(-1, 1)


def save_grid(images, n, path):
    """One row per 16 images: n images of a class side by side, classes in order."""
    count, h, w, _ = images.shape
    cols = 16 if count % 16 == 0 else n
    rows = count // cols
    grid = images.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid.reshape(rows * h, cols * w, 3)).save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "emoji-64"))
    ap.add_argument("--tessera", default=os.path.join(ROOT, "build", "tessera"))
    ap.add_argument("--data", default=os.path.join(ROOT, "build", "train", "dataset.npz"))
    ap.add_argument("--classes", type=int, default=64, help="how many classes (spread evenly)")
    ap.add_argument("--n", type=int, default=2, help="images per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--grid", help="write the generated images as one PNG")
    ap.add_argument("--json", help="write the figures as JSON")
    ap.add_argument("--no-psnr", action="store_true", help="skip the reconstruction figure")
    ap.add_argument("--min-top1", type=float)
    ap.add_argument("--min-top5", type=float)
    ap.add_argument("--min-psnr", type=float)
    ap.add_argument("extra", nargs="*", help="after --: more `tessera generate` options")
    a = ap.parse_args()

    with open(os.path.join(a.model, "config.json")) as f:
        num_classes = json.load(f)["gpt"]["num_classes"]
    classes = fixed_classes(num_classes, a.classes)
    images = generate(a.tessera, a.model, classes, a.n, a.seed, a.threads, a.extra)
    labels = [c for c in classes for _ in range(a.n)]
    top1, top5, _ = classify(a.model, images, labels)
    _, meta = stfile.load(os.path.join(a.model, "eval", "classifier.safetensors"),
                          with_metadata=True)
    out = {"model": a.model, "classes": len(classes), "images": len(labels), "seed": a.seed,
           "generate_options": a.extra, "top1": round(top1, 4), "top5": round(top5, 4),
           "chance_top1": round(1 / num_classes, 5), "chance_top5": round(5 / num_classes, 5),
           "classifier_heldout_top1": float(meta["heldout_top1"]) if "heldout_top1" in meta else None,
           "classifier_heldout_top5": float(meta["heldout_top5"]) if "heldout_top5" in meta else None}
    if a.grid:
        save_grid(images, a.n, a.grid)
    if not a.no_psnr:
        if not os.path.exists(a.data):
            subprocess.run([sys.executable, os.path.join(HERE, "make_emoji_dataset.py"),
                            "--out", a.data], check=True)
        data = np.load(a.data)
        held = data["images"][data["heldout"]]
        out["heldout_images"] = int(len(held))
        value, rec = reconstruct(a.model, held)
        out["reconstruction_psnr_db"] = round(value, 2)
        # The classifier on the tokenizer's reconstructions: about the best a generator
        # over this tokenizer can score.
        rec_u8 = ((rec + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        r1, r5, _ = classify(a.model, rec_u8, data["labels"][data["heldout"]].tolist())
        out["reconstruction_top1"], out["reconstruction_top5"] = round(r1, 4), round(r5, 4)
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    failed = [name for name, value, floor in (("top1", top1, a.min_top1),
                                              ("top5", top5, a.min_top5),
                                              ("psnr", out.get("reconstruction_psnr_db"),
                                               a.min_psnr))
              if floor is not None and (value is None or value < floor)]
    if failed:
        sys.exit("below threshold: %s" % ", ".join(failed))


if __name__ == "__main__":
    main()
