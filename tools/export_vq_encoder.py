#!/usr/bin/python3
"""Writes the encoder half of a VQ checkpoint (encoder.*, quant_conv.*) as bf16 safetensors.

The server only decodes, so tools/convert.py drops the encoder; tools/quality.py needs it
to measure the tokenizer's reconstruction, so the default model keeps it beside, in eval/.
  usage: tools/export_vq_encoder.py VQ.pt OUT.safetensors
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert  # noqa: E402
import stfile  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n")[-2].strip())
    sd = convert.vq_state_dict(torch.load(sys.argv[1], map_location="cpu"))
    cfg = convert.infer_vq_config(convert.drop_unused_vq(sd))
    shapes = convert.vq_encoder_shapes(cfg)
    del shapes["quantize.codebook_used"]   # training statistics, not weights
    enc = {k: sd[k] for k in shapes}
    convert.check_keys(enc, shapes, "VQ encoder")
    stfile.save(sys.argv[2], enc, cast=torch.bfloat16)
    print("wrote %s (%d tensors)" % (sys.argv[2], len(enc)))


if __name__ == "__main__":
    main()
