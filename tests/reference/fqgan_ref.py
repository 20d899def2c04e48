#!/usr/bin/python3
"""fp32 PyTorch reference for FQGAN class-to-image: the FAR generator and the factorized
tokenizer's decoder.

Written from the math of showlab/FQGAN (autoregressive/models/far_{dual,triple}.py,
generate_{dual,triple}.py, tokenizer/vq_model_{dual,triple}.py), functionally over dicts
of tensors named as upstream names them. The pieces FQGAN shares with LlamaGen (RoPE table,
rotation, RMSNorm, the sampling filters, the VQ decoder, the 8-bit mapping) are imported
from llamagen_ref.py. What FQGAN adds, and every quirk that changes numbers:

- k sub-tokens per image position (k = 2 "dual", 3 "triple"), each from its own 16384-entry
  codebook. Sub-token 1 is the visual-detail code; 2 the semantic one (triple: 2 mid-level,
  3 high-level).
- FAR trunk input: the k embeddings tok_embeddings_j[sub-token j] are concatenated (j = 1
  first) and mapped by aggregation_layer (Linear k*dim -> dim, with bias). The class token
  and the trunk are LlamaGen's (2D RoPE, zero rotary row at the class position).
- Per-position AR head: ar_head (blocks of the trunk's kind, shared by all positions) runs
  causally over k slots. Slot 0 is the trunk's output at that position before the final
  norm; slot j >= 1 is the raw tok_embeddings_j row of the position's sub-token j (no
  aggregation). Slot i uses row i of the trunk's rotary table: slot 0 the zero row (q = k =
  0), slot 1 grid (0, 0) (no rotation), slot 2 grid (0, 1). Every slot goes through the
  shared final `norm`; slot j's logits come from output_{j+1}.
- Generation per position: one trunk step, then k head steps; sub-token j is sampled from
  slot j-1's logits. CFG (batch [cond; uncond], null class = num_classes) combines each
  sub-token's logits separately as u + (c - u) * s, and the sub-token sampled for the cond
  half is fed to both halves. Sampling: temperature -> top-k (ties kept) -> top-p ->
  softmax -> multinomial, as LlamaGen (upstream always samples; top-k 1 is argmax unless
  two logits tie).
- Tokenizer decode: each sub-token grid looks up its l2-normalised codebook rows; the k
  8-channel maps are concatenated in sub-token order (channels 0-7 = sub-token 1 =
  quantize_vis), then post_quant_conv (k*8 -> z) and LlamaGen's decoder. Upstream's sample
  script calls decode_code(sem, vis) for dual, which concatenates [vis, sem]: the same.

Sub-token grids are LongTensors [B, L, k] (position-major, sub-token j at [..., j-1]).
Load a converted folder with load_model_dir(), or official state dicts with
FarRef.from_official() / FqVqDecoderRef.from_official().
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llamagen_ref as lref  # noqa: E402
from llamagen_ref import convert, llama_block, rms_norm, rope_table_2d, sample_logits  # noqa
from llamagen_ref import stfile, to_uint8  # noqa: E402,F401


def _per_sub(value, k, what):
    """A scalar or a list of k values (upstream passes one per sub-token)."""
    if isinstance(value, (list, tuple)):
        if len(value) != k:
            raise ValueError("%s: %d values for %d sub-tokens" % (what, len(value), k))
        return list(value)
    return [value] * k


class FarRef:
    """FAR c2i (trunk + per-position AR head) over upstream-named fp32 weights."""

    def __init__(self, cfg, weights):
        if cfg.get("model_type", "c2i") != "c2i" or cfg.get("cls_token_num", 1) != 1:
            raise ValueError("only c2i with cls_token_num 1 is supported")
        if cfg.get("n_kv_head", cfg["n_head"]) != cfg["n_head"]:
            raise ValueError("grouped-query attention is not supported")
        self.cfg = cfg
        self.w = lref._checked_fp32(weights, convert.far_shapes(cfg), "FAR")
        self.k = cfg["n_sub"]
        self.dim, self.n_head = cfg["dim"], cfg["n_head"]
        self.head_dim = self.dim // self.n_head
        self.eps = cfg.get("norm_eps", convert.NORM_EPS)
        grid = math.isqrt(cfg["block_size"])
        assert grid * grid == cfg["block_size"], "block_size must be a square"
        self.rope = rope_table_2d(grid, self.head_dim, cfg.get("rope_base", convert.ROPE_BASE),
                                  1)

    @classmethod
    def from_official(cls, state_dict, block_size, far_model=None, n_head=None):
        sd = convert.drop_unused_far(state_dict)
        cfg, _ = convert.infer_far_config(sd, block_size, far_model, n_head)
        return cls(cfg, sd)

    @property
    def null_class(self):
        return self.cfg["num_classes"]

    # --- embeddings ------------------------------------------------------------------

    def embed_classes(self, labels):
        return self.w["cls_embedding.embedding_table.weight"][labels][:, None, :]

    def sub_embedding(self, j, ids):
        """tok_embeddings_j rows (j = 1..k) of ids (any shape) -> [..., dim]."""
        return self.w["tok_embeddings_%d.weight" % j][ids]

    def embed_positions(self, subs):
        """subs [B, S, k] -> trunk inputs [B, S, dim]: aggregation_layer over the
        concatenated sub-token embeddings (sub-token 1 first)."""
        cat = torch.cat([self.sub_embedding(j + 1, subs[..., j]) for j in range(self.k)], -1)
        return F.linear(cat, self.w["aggregation_layer.weight"],
                        self.w["aggregation_layer.bias"])

    def _block(self, p, h, pos, cache, i):
        return llama_block(self.w, p, h, pos, self.rope, self.n_head, self.eps, cache, i)

    def trunk(self, h, pos, cache=None):
        """h [B, S, dim] at positions pos [S] -> trunk output [B, S, dim], before `norm`."""
        for i in range(self.cfg["n_layer"]):
            h = self._block("layers.%d." % i, h, pos, cache, i)
        return h

    def head(self, slots, slot_pos, cache=None):
        """slots [N, S, dim] at head slots slot_pos [S] (within 0..k-1) -> logits
        [N, S, V], slot s read by output_{s+1}."""
        h = slots
        for i in range(self.cfg["head_layers"]):
            h = self._block("ar_head.%d." % i, h, slot_pos, cache, i)
        h = rms_norm(h, self.w["norm.weight"], self.eps)
        return torch.stack([F.linear(h[:, s], self.w["output_%d.weight" % (int(p) + 1)])
                            for s, p in enumerate(slot_pos)], dim=1).float()

    def new_trunk_cache(self):
        return [None] * self.cfg["n_layer"]

    def new_head_cache(self):
        return [None] * self.cfg["head_layers"]

    # --- full forward ----------------------------------------------------------------

    @torch.no_grad()
    def teacher_forced(self, labels, subs):
        """Upstream's training forward. labels [B], subs [B, L, k] ->
        (logits [B, L, k, V], trunk output [B, L, dim]).

        Position i's trunk input is the class (i = 0) or position i-1's aggregated
        sub-tokens; its head sees the trunk output and sub-tokens 1..k-1 of position i, and
        logits[:, i, j] predict sub-token j+1 of position i."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        subs = torch.as_tensor(subs, dtype=torch.long)
        b, length, k = subs.shape
        assert k == self.k, "subs has %d sub-tokens, the model %d" % (k, self.k)
        h = torch.cat([self.embed_classes(labels), self.embed_positions(subs[:, :-1])], dim=1)
        hidden = self.trunk(h, torch.arange(length))
        slots = [hidden] + [self.sub_embedding(j, subs[..., j - 1]) for j in range(1, k)]
        slots = torch.stack(slots, dim=2).reshape(b * length, k, self.dim)
        logits = self.head(slots, torch.arange(k))
        return logits.reshape(b, length, k, -1), hidden

    def teacher_forced_logits(self, labels, subs):
        return self.teacher_forced(labels, subs)[0]

    # --- generation ------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, labels, n_tokens=None, cfg_scale=1.0, temperature=1.0, top_k=0,
                 top_p=1.0, sample=True, generator=None, trace=None, use_cache=True):
        """Upstream's generate_fq: returns sub-tokens [B, n_tokens, k].

        cfg_scale, temperature, top_k, top_p: one value or a list of k (one per sub-token,
        as upstream takes them; guidance must be on for all or none). sample=False takes
        the argmax instead of drawing. trace, if a list, receives the guided logits [B, V]
        of every draw, position-major (k per position). use_cache=False recomputes the
        trunk over the whole prefix and the head over all earlier slots at every step (no
        KV caches: a check of the cached path).
        """
        labels = torch.as_tensor(labels, dtype=torch.long)
        k = self.k
        n_tokens = n_tokens or self.cfg["block_size"]
        scales = _per_sub(cfg_scale, k, "cfg_scale")
        temps = _per_sub(temperature, k, "temperature")
        top_ks = _per_sub(top_k, k, "top_k")
        top_ps = _per_sub(top_p, k, "top_p")
        use_cfg = scales[0] > 1.0
        if any((s > 1.0) != use_cfg for s in scales):
            raise ValueError("cfg_scale must be > 1 for every sub-token or for none "
                             "(upstream fails otherwise)")
        batch = labels.shape[0]
        if use_cfg:
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
        cls = self.embed_classes(labels)
        trunk_cache = self.new_trunk_cache() if use_cache else None
        inputs = [cls]                      # trunk inputs so far (for use_cache=False)
        fed = None                          # the previous position's sub-tokens
        out = []
        for n in range(n_tokens):
            if use_cache:
                x = cls if n == 0 else self.embed_positions(fed)
                hid = self.trunk(x, torch.tensor([n]), trunk_cache)[:, -1:]
            else:
                hid = self.trunk(torch.cat(inputs, dim=1), torch.arange(n + 1))[:, -1:]
            head_cache = self.new_head_cache() if use_cache else None
            slots = [hid]
            picked = []
            for j in range(k):
                if use_cache:
                    logits = self.head(slots[-1], torch.tensor([j]), head_cache)[:, -1]
                else:
                    logits = self.head(torch.cat(slots, dim=1), torch.arange(j + 1))[:, -1]
                if use_cfg:
                    cond, uncond = logits[:batch], logits[batch:]
                    logits = uncond + (cond - uncond) * scales[j]
                if trace is not None:
                    trace.append(logits.clone())
                tok = sample_logits(logits, temps[j], top_ks[j], top_ps[j], sample, generator)
                picked.append(tok)                                    # [B, 1]
                both = torch.cat([tok, tok]) if use_cfg else tok      # cond's draw for all
                if j + 1 < k:
                    slots.append(self.sub_embedding(j + 1, both))     # [B', 1, dim]
            step = torch.stack(picked, dim=-1)                        # [B, 1, k]
            out.append(step)
            fed = torch.cat([step, step]) if use_cfg else step
            inputs.append(self.embed_positions(fed))
        return torch.cat(out, dim=1)


# ---------------------------------------------------------------------------------------
# Tokenizer decoder


class FqVqDecoderRef(lref.VqDecoderRef):
    """Sub-token grids [B, L, k] -> image [-1, 1]: k l2-normalised lookups concatenated
    in sub-token order, then LlamaGen's post_quant_conv + decoder (inherited)."""

    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.k = cfg["n_sub"]
        self.books = convert.FQGAN_CODEBOOKS[self.k]
        self.w = lref._checked_fp32(weights, convert.fqgan_vq_shapes(cfg), "tokenizer")

    @classmethod
    def from_official(cls, state_dict):
        sd = convert.drop_unused_fqgan_vq(state_dict)
        return cls(convert.infer_fqgan_vq_config(sd), sd)

    @torch.no_grad()
    def lookup(self, codes):
        """codes [B, L, k] -> latents [B, k * embed_dim, grid, grid]."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        b, n, k = codes.shape
        assert k == self.k, "codes have %d sub-tokens, the tokenizer %d" % (k, self.k)
        grid = math.isqrt(n)
        assert grid * grid == n, "a square grid of tokens is needed"
        parts = []
        for j, name in enumerate(self.books):
            book = F.normalize(self.w[name + ".embedding.weight"], p=2, dim=-1)
            parts.append(book[codes[..., j]].reshape(b, grid, grid, -1).permute(0, 3, 1, 2))
        return torch.cat(parts, dim=1).contiguous()


# ---------------------------------------------------------------------------------------


def load_model_dir(path):
    """Loads an FQGAN model folder: returns (FarRef or None, FqVqDecoderRef, config)."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    if config.get("family") != "fqgan":
        raise ValueError("%s: not an fqgan model folder" % path)
    far = None
    if "gpt" in config:
        g = config["gpt"]
        far = FarRef(g, stfile.load(os.path.join(path, g["file"])))
    v = config["vq"]
    vq = FqVqDecoderRef(v, stfile.load(os.path.join(path, v["file"])))
    return far, vq, config
