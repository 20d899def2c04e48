#!/usr/bin/python3
"""fp32 PyTorch reference for LlamaGen class-to-image: the GPT and the VQ decoder.

Written from the math of FoundationVision/LlamaGen (autoregressive/models/gpt.py,
generate.py, tokenizer/tokenizer_image/vq_model.py), functionally over a dict of tensors
named as upstream names them. It is the oracle the C engine's tests compare against, so
every quirk that changes numbers is kept:

- RMSNorm in fp32: x * rsqrt(mean(x^2) + eps) * weight.
- 2D RoPE on interleaved pairs (x[2j], x[2j+1]); the first head_dim/4 pairs rotate by the
  token's row, the last head_dim/4 by its column; the cls_token_num condition rows of the
  table are all zero (cos = sin = 0), so q and k at the class position are exactly 0.
- Causal attention with scale 1/sqrt(head_dim); SwiGLU w2(silu(w1 x) * w3 x).
- Generation: CFG on the batch [cond; uncond] only when cfg_scale > 1, combined on fp32
  logits; cfg_interval switches to cond-only logits after a decode step index; sampling
  is temperature -> top-k (ties kept) -> top-p (HF rule) -> softmax -> multinomial.
- VQ decode: l2-normalised codebook lookup, post_quant_conv, decoder, and
  clamp(127.5 x + 128, 0, 255) truncated to 8 bits.

Load a converted folder with load_model_dir(), or an official state dict with
GptRef.from_official() / VqDecoderRef.from_official().
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "tools"))
import convert  # noqa: E402
import stfile  # noqa: E402


def _checked_fp32(weights, expected, what):
    convert.check_keys(weights, expected, what)
    return {k: v.detach().to(torch.float32) for k, v in weights.items()}


# ---------------------------------------------------------------------------------------
# GPT


def rope_table_2d(grid, head_dim, base, cls_token_num):
    """[cls_token_num + grid^2, head_dim/2, 2] of (cos, sin), as upstream precomputes it.

    The frequency expression is kept literally (arange over even numbers, divided by
    half) because rewriting it as 2k/half changes the fp32 rounding.
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid), freqs)                 # [grid, head_dim/4]
    rows = angles[:, None, :].expand(grid, grid, -1)                # angle of the row index
    cols = angles[None, :, :].expand(grid, grid, -1)                # angle of the column index
    grid_angles = torch.cat([rows, cols], dim=-1).reshape(grid * grid, half)
    table = torch.stack([torch.cos(grid_angles), torch.sin(grid_angles)], dim=-1)
    return torch.cat([torch.zeros(cls_token_num, half, 2), table])


def apply_rope(x, table):
    """x [B, S, H, head_dim], table [S, head_dim/2, 2]: rotates each (even, odd) pair."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos = table[None, :, None, :, 0]
    sin = table[None, :, None, :, 1]
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(3)


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps) * weight


def llama_block(w, p, h, pos, rope, n_head, eps, cache=None, i=0, allowed=None):
    """One LlamaGen TransformerBlock over the weights named p + "...": h [B, S, dim] at
    rows pos [S] of the rotary table rope. cache (a list, or None) holds at cache[i] the
    earlier (k, v) of this sequence, which starts at row 0, and is extended in place.
    allowed (bool [B, S, T], or None for causal) says which keys each query sees: the
    t2i mask (llamagen_t2i_ref.py). FQGAN's FAR runs its trunk and its head with the same
    block (fqgan_ref.py)."""
    dim = h.shape[-1]
    head_dim = dim // n_head
    x = rms_norm(h, w[p + "attention_norm.weight"], eps)
    q, k, v = F.linear(x, w[p + "attention.wqkv.weight"]).split(dim, dim=-1)
    shape = (x.shape[0], x.shape[1], n_head, head_dim)
    table = rope[pos]
    q = apply_rope(q.reshape(shape), table).transpose(1, 2)     # [B, H, S, hd]
    k = apply_rope(k.reshape(shape), table).transpose(1, 2)
    v = v.reshape(shape).transpose(1, 2)
    if cache is not None:
        if cache[i] is not None:
            k = torch.cat([cache[i][0], k], dim=2)
            v = torch.cat([cache[i][1], v], dim=2)
        cache[i] = (k, v)
    if allowed is None:
        allowed = torch.arange(k.shape[2])[None, :] <= pos[:, None]  # [S, T]
    else:
        allowed = allowed[:, None]                                   # [B, 1, S, T]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(x.shape)
    h = h + F.linear(out, w[p + "attention.wo.weight"])
    x = rms_norm(h, w[p + "ffn_norm.weight"], eps)
    gate = F.silu(F.linear(x, w[p + "feed_forward.w1.weight"]))
    return h + F.linear(gate * F.linear(x, w[p + "feed_forward.w3.weight"]),
                        w[p + "feed_forward.w2.weight"])


class GptRef:
    """LlamaGen c2i transformer over upstream-named fp32 weights."""

    def __init__(self, cfg, weights):
        if cfg.get("model_type", "c2i") != "c2i" or cfg.get("cls_token_num", 1) != 1:
            raise ValueError("only c2i with cls_token_num 1 is supported")
        if cfg.get("n_kv_head", cfg["n_head"]) != cfg["n_head"]:
            raise ValueError("grouped-query attention is not supported")
        self.cfg = cfg
        self.w = _checked_fp32(weights, convert.gpt_shapes(cfg), "GPT")
        self.dim, self.n_head = cfg["dim"], cfg["n_head"]
        self.head_dim = self.dim // self.n_head
        self.eps = cfg.get("norm_eps", convert.NORM_EPS)
        grid = math.isqrt(cfg["block_size"])
        assert grid * grid == cfg["block_size"], "block_size must be a square"
        self.rope = rope_table_2d(grid, self.head_dim, cfg.get("rope_base", convert.ROPE_BASE),
                                  cfg.get("cls_token_num", 1))

    @classmethod
    def from_official(cls, state_dict, block_size, gpt_model=None, n_head=None):
        sd = convert.drop_unused_gpt(state_dict)
        cfg, _ = convert.infer_gpt_config(sd, block_size, gpt_model, n_head)
        return cls(cfg, sd)

    @property
    def null_class(self):
        return self.cfg["num_classes"]

    def embed_classes(self, labels):
        return self.w["cls_embedding.embedding_table.weight"][labels][:, None, :]

    def embed_tokens(self, ids):
        return self.w["tok_embeddings.weight"][ids]

    def forward(self, h, pos, cache=None):
        """h [B, S, dim] embeddings at positions pos (LongTensor [S]) -> logits [B, S, V].

        cache: a list with one entry per layer (None at first), extended in place.
        """
        for i in range(self.cfg["n_layer"]):
            h = llama_block(self.w, "layers.%d." % i, h, pos, self.rope, self.n_head, self.eps,
                            cache, i)
        h = rms_norm(h, self.w["norm.weight"], self.eps)
        return F.linear(h, self.w["output.weight"]).float()

    def new_cache(self):
        return [None] * self.cfg["n_layer"]

    @torch.no_grad()
    def teacher_forced_logits(self, labels, tokens):
        """Full causal forward over [class, tokens...]: logits [B, 1 + n, V]."""
        h = torch.cat([self.embed_classes(labels), self.embed_tokens(tokens)], dim=1)
        return self.forward(h, torch.arange(h.shape[1]))

    @torch.no_grad()
    def generate(self, labels, n_tokens=None, cfg_scale=1.0, cfg_interval=-1,
                 temperature=1.0, top_k=0, top_p=1.0, sample=True, generator=None,
                 trace=None):
        """KV-cached generation as upstream's generate(): returns tokens [B, n_tokens].

        trace, if a list, receives the guided logits [B, V] each token was sampled from.
        """
        labels = torch.as_tensor(labels, dtype=torch.long)
        n_tokens = n_tokens or self.cfg["block_size"]
        use_cfg = cfg_scale > 1.0
        batch = labels.shape[0]
        if use_cfg:
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
        cache = self.new_cache()

        def pick(logits, guided):
            logits = logits[:, -1, :]
            if use_cfg:
                cond, uncond = logits[:batch], logits[batch:]
                logits = uncond + (cond - uncond) * cfg_scale if guided else cond
            if trace is not None:
                trace.append(logits.clone())
            return sample_logits(logits, temperature, top_k, top_p, sample, generator)

        token = pick(self.forward(self.embed_classes(labels), torch.tensor([0]), cache), True)
        out = [token]
        for step in range(n_tokens - 1):
            # Upstream: guidance stays on until the decode step index passes cfg_interval.
            guided = not (cfg_interval > -1 and step > cfg_interval)
            fed = torch.cat([token, token]) if use_cfg else token
            logits = self.forward(self.embed_tokens(fed), torch.tensor([1 + step]), cache)
            token = pick(logits, guided)
            out.append(token)
        return torch.cat(out, dim=1)


def sample_logits(logits, temperature=1.0, top_k=0, top_p=1.0, sample=True, generator=None):
    """logits [B, V] -> token ids [B, 1], in upstream's order of filters."""
    logits = logits / max(temperature, 1e-5)
    if top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))       # ties survive
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        over = torch.cumsum(torch.softmax(ordered, dim=-1), dim=-1) > top_p
        # HF rule: also keep the first token that crosses the threshold.
        drop = torch.cat([torch.zeros_like(over[..., :1]), over[..., :-1]], dim=-1)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sample:
        return torch.multinomial(probs, 1, generator=generator)
    return torch.topk(probs, 1).indices


# ---------------------------------------------------------------------------------------
# VQ decoder


class VqDecoderRef:
    """Codes -> image [-1, 1] with the taming-style decoder of LlamaGen's VQ tokenizer."""

    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.w = _checked_fp32(weights, convert.vq_decoder_shapes(cfg), "VQ")

    @classmethod
    def from_official(cls, state_dict):
        sd = convert.drop_unused_vq(state_dict)
        return cls(convert.infer_vq_config(sd), sd)

    def _conv(self, name, x):
        weight = self.w[name + ".weight"]
        return F.conv2d(x, weight, self.w[name + ".bias"], padding=weight.shape[-1] // 2)

    def _norm_swish(self, name, x, swish=True):
        x = F.group_norm(x, 32, self.w[name + ".weight"], self.w[name + ".bias"], eps=1e-6)
        return x * torch.sigmoid(x) if swish else x

    def _res(self, name, x):
        h = self._conv(name + ".conv1", self._norm_swish(name + ".norm1", x))
        h = self._conv(name + ".conv2", self._norm_swish(name + ".norm2", h))
        if name + ".nin_shortcut.weight" in self.w:
            x = self._conv(name + ".nin_shortcut", x)
        return x + h

    def _attn(self, name, x):
        """Single-head self-attention over all pixels, channels as features."""
        b, c, hgt, wid = x.shape
        h = self._norm_swish(name + ".norm", x, swish=False)
        q, k, v = (self._conv(name + "." + p, h).reshape(b, c, hgt * wid) for p in "qkv")
        attn = torch.softmax((q.transpose(1, 2) @ k) * c ** -0.5, dim=-1)  # [b, query, key]
        out = (v @ attn.transpose(1, 2)).reshape(b, c, hgt, wid)
        return x + self._conv(name + ".proj_out", out)

    @torch.no_grad()
    def lookup(self, codes):
        """codes [B, grid^2] -> latents [B, embed_dim, grid, grid] (l2-normalised rows)."""
        b, n = codes.shape
        grid = math.isqrt(n)
        book = F.normalize(self.w["quantize.embedding.weight"], p=2, dim=-1)
        return book[codes.long()].reshape(b, grid, grid, -1).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def decode(self, codes):
        cfg = self.cfg
        h = self._conv("post_quant_conv", self.lookup(codes))
        h = self._conv("decoder.conv_in", h)
        h = self._res("decoder.mid.0", h)
        h = self._attn("decoder.mid.1", h)
        h = self._res("decoder.mid.2", h)
        levels = len(cfg["ch_mult"])
        for l in range(levels):
            p = "decoder.conv_blocks.%d." % l
            for j in range(cfg["num_res_blocks"] + 1):
                h = self._res(p + "res.%d" % j, h)
                if l == 0:  # only the lowest-resolution level has attention
                    h = self._attn(p + "attn.%d" % j, h)
            if l != levels - 1:
                h = self._conv(p + "upsample.conv", F.interpolate(h, scale_factor=2.0,
                                                                  mode="nearest"))
        h = self._norm_swish("decoder.norm_out", h)
        return self._conv("decoder.conv_out", h)


def to_uint8(images):
    """[B, 3, H, W] in about [-1, 1] -> uint8 [B, H, W, 3], truncating as upstream does."""
    return torch.clamp(127.5 * images + 128.0, 0, 255).permute(0, 2, 3, 1).to(torch.uint8)


# ---------------------------------------------------------------------------------------


def load_model_dir(path):
    """Loads a Tessera model folder: returns (GptRef, VqDecoderRef or None, config)."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    if config.get("family") != "llamagen":
        raise ValueError("%s: not a llamagen model folder" % path)
    g = config["gpt"]
    gpt = GptRef(g, stfile.load(os.path.join(path, g["file"])))
    vq = None
    if "vq" in config:
        v = config["vq"]
        vq = VqDecoderRef(v, stfile.load(os.path.join(path, v["file"])))
    return gpt, vq, config
