#!/usr/bin/python3
"""Builds the emoji dataset the default models train on, from two Debian packages.

  fonts-noto-color-emoji   NotoColorEmoji.ttf (SIL OFL 1.1): the pictures
  unicode-data             emoji/emoji-test.txt (Unicode licence): names and groups

Every fully-qualified emoji of emoji-test.txt that the font draws as one glyph becomes one
64x64 RGB image on white, the glyph scaled to fill the square less a small margin. The
class is the emoji's Unicode name with skin tones removed, so the skin-tone variants of
"waving hand" are six images of one class; the caption is the full Unicode name.

  usage: tools/make_emoji_dataset.py --out build/emoji/dataset.npz [--size 64]
                                     [--classes-out build/emoji/classes.txt]

Output (numpy .npz): images uint8 [N, S, S, 3], labels int32 [N], heldout bool [N] (about
one image in 20, by a hash of its code points, never used to train the tokenizer), and
JSON strings: class_names [C], class_emoji [C] (the first emoji of each class), captions
[N]. The order follows emoji-test.txt, so the file is the same on every machine with
the same package versions. --classes-out writes the class table a model folder carries:
line i is "<name>, <emoji>", so a request may name the class either way.
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
BITMAP_SIZE = 109   # the only strike the CBDT font has
MARGIN = 2          # pixels of white around the scaled glyph


def read_emoji_test(path):
    """-> list of (emoji string, name, group) for the fully-qualified entries."""
    out, group = [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
                continue
            if not line or line.startswith("#"):
                continue
            fields, _, comment = line.partition("#")
            codes, status = [s.strip() for s in fields.split(";")]
            if status != "fully-qualified" or group == "Component":
                continue
            emoji = "".join(chr(int(c, 16)) for c in codes.split())
            # comment: "<emoji> E<version> <name>"
            name = comment.strip().split(" ", 2)[2]
            out.append((emoji, name, group))
    return out


def class_name(name):
    """The Unicode name without skin tones, in a form the class table can hold.

    classes.txt separates synonyms with commas, so the qualifier list is joined with
    " and " instead: "kiss: woman, man, dark skin tone" -> "kiss: woman and man"."""
    base, sep, quals = name.partition(": ")
    kept = [q for q in quals.split(", ") if q and not q.endswith("skin tone")] if sep else []
    return base + (": " + " and ".join(kept) if kept else "")


def render(font, emoji, size):
    """The glyph scaled into a size x size white square, or None when the font draws the
    sequence as more than one glyph (a wider picture) or not at all."""
    canvas = Image.new("RGBA", (4 * BITMAP_SIZE, 2 * BITMAP_SIZE), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), emoji, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None or box[2] - box[0] > 1.4 * BITMAP_SIZE:
        return None
    glyph = canvas.crop(box)
    inner = size - 2 * MARGIN
    scale = inner / max(glyph.size)
    w, h = max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale))
    glyph = glyph.resize((w, h), Image.LANCZOS)
    out = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    out.alpha_composite(glyph, ((size - w) // 2, (size - h) // 2))
    return np.asarray(out.convert("RGB"), dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--classes-out", help="also write the class table (classes.txt)")
    ap.add_argument("--font", default=FONT)
    ap.add_argument("--emoji-test", default=EMOJI_TEST)
    a = ap.parse_args()
    for path, pkg in ((a.font, "fonts-noto-color-emoji"), (a.emoji_test, "unicode-data")):
        if not os.path.exists(path):
            sys.exit("%s not found: apt-get install %s" % (path, pkg))

    font = ImageFont.truetype(a.font, BITMAP_SIZE)
    images, labels, captions, heldout = [], [], [], []
    class_ids, class_names, class_emoji = {}, [], []
    skipped = 0
    for emoji, name, _group in read_emoji_test(a.emoji_test):
        img = render(font, emoji, a.size)
        if img is None:
            skipped += 1
            continue
        cname = class_name(name)
        if cname not in class_ids:
            class_ids[cname] = len(class_names)
            class_names.append(cname)
            class_emoji.append(emoji)
        images.append(img)
        labels.append(class_ids[cname])
        captions.append(name)
        heldout.append(hashlib.sha256(emoji.encode()).digest()[0] < 13)  # ~1 in 20

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    np.savez_compressed(
        a.out, images=np.stack(images), labels=np.array(labels, dtype=np.int32),
        heldout=np.array(heldout), class_names=json.dumps(class_names),
        class_emoji=json.dumps(class_emoji), captions=json.dumps(captions))
    if a.classes_out:
        with open(a.classes_out, "w", encoding="utf-8") as f:
            f.writelines("%s, %s\n" % pair for pair in zip(class_names, class_emoji))
    print("%s: %d images of %d classes (%d held out), %d sequences skipped (not one glyph)"
          % (a.out, len(images), len(class_names), sum(heldout), skipped))


if __name__ == "__main__":
    main()
