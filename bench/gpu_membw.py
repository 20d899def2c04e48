#!/usr/bin/env python3
"""Device memory bandwidth through PyTorch, the divisor of bench/gpu.sh's decode-step floor.

    gpu_membw.py [--gib 2] [--reps 20] [--device cuda] [--json FILE]

copy: dst.copy_(src) of a --gib GiB buffer of random float32, device to device; bytes moved
= bytes read + bytes written = 2 x size. read: torch.sum over the same buffer, bytes = size
(the one float written is left out). Each is warmed up 3 times, then timed --reps times
with CUDA events around the single operation; best and median are reported in GB/s
(10^9 bytes/s). Both buffers are far larger than the L2 cache, so every pass comes from
device memory. Prints one JSON object (to --json FILE too).
"""
import argparse
import json
import statistics
import sys

import torch


def timed(fn, reps, dev):
    for _ in range(3):
        fn()
    torch.cuda.synchronize(dev)
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) / 1e3)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_membw: torch %s sees no CUDA device" % torch.__version__)
    dev = torch.device(a.device)
    n = int(a.gib * (1 << 30)) // 4
    src = torch.randn(n, device=dev, dtype=torch.float32)
    dst = torch.empty_like(src)
    size = n * 4
    copy_s = timed(lambda: dst.copy_(src), a.reps, dev)
    if not torch.equal(dst[:: 1 << 20], src[:: 1 << 20]):
        sys.exit("gpu_membw: the copy is wrong")
    read_s = timed(lambda: torch.sum(src), a.reps, dev)
    props = torch.cuda.get_device_properties(dev)
    out = {
        "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "multiprocessors": props.multi_processor_count,
        "device_memory_bytes": props.total_memory,
        "buffer_bytes": size,
        "reps": a.reps,
        "copy_gbs_median": 2 * size / statistics.median(copy_s) / 1e9,
        "copy_gbs_best": 2 * size / min(copy_s) / 1e9,
        "read_gbs_median": size / statistics.median(read_s) / 1e9,
        "read_gbs_best": size / min(read_s) / 1e9,
        "copy_s": copy_s,
        "read_s": read_s,
    }
    text = json.dumps(out)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
