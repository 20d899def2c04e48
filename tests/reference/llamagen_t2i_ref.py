#!/usr/bin/python3
"""fp32 PyTorch reference for LlamaGen text-to-image: the prompt's T5 features, the
caption projection and the GPT with its 120-position text prefix.

Written from the math of FoundationVision/LlamaGen (autoregressive/models/gpt.py's
CaptionEmbedder, generate.py, autoregressive/sample/sample_t2i.py) and kept literal where
the numbers depend on it, so that it checks the engine's shortcuts instead of sharing them:

- The prefix is the full cls_token_num (120) positions. sample_t2i.py left-pads: the
  valid T5 rows move to the end, the mask is flipped, and padded rows are zeroed.
- Attention mask (generate.py): causal, with the padded text columns cleared for every
  row (image rows too), then the diagonal forced on.
- CFG: the null branch is cls_embedding.uncond_embedding (all 120 rows, not zeroed)
  through the same cap_proj, with the prompt's mask.
- The text rows of the RoPE table are zero (llamagen_ref.rope_table_2d), so q and k
  vanish at every text position.
- cap_proj = fc2(gelu_tanh(fc1(x))), no biases.

The engine instead drops the padded positions altogether (they are masked for every
other row, so no valid row's output depends on them); the tests check the two agree.
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import llamagen_ref as ref  # noqa: E402
from llamagen_ref import convert  # noqa: E402


def left_pad(embs, masks):
    """sample_t2i.py's left padding: embs [B, T, C] (T5 output, right-padded), masks
    [B, T] -> (embs with each prompt's valid rows moved to the end and the rest zeroed,
    flipped masks)."""
    new_masks = torch.flip(masks, dims=[-1])
    rows = []
    for emb, m in zip(embs, masks):
        n = int(m.sum().item())
        rows.append(torch.cat([emb[n:], emb[:n]]))
    return torch.stack(rows) * new_masks[:, :, None].to(embs.dtype), new_masks


def t2i_allowed(masks, length):
    """generate.py's mask: bool [B, length, length], causal, padded text columns off for
    every row, the diagonal on. masks [B, T] covers the first T columns."""
    B, T = masks.shape
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))[None].repeat(B, 1, 1)
    allowed[:, :, :T] &= masks.bool()[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool)[None]
    return allowed


class T2iGptRef:
    """LlamaGen t2i transformer over upstream-named fp32 weights."""

    def __init__(self, cfg, weights):
        if cfg.get("model_type") != "t2i":
            raise ValueError("not a t2i GPT config")
        self.cfg = cfg
        self.w = ref._checked_fp32(weights, convert.gpt_shapes(cfg), "GPT")
        self.dim, self.n_head = cfg["dim"], cfg["n_head"]
        self.T = cfg["cls_token_num"]
        self.eps = cfg.get("norm_eps", convert.NORM_EPS)
        grid = math.isqrt(cfg["block_size"])
        self.rope = ref.rope_table_2d(grid, self.dim // self.n_head,
                                      cfg.get("rope_base", convert.ROPE_BASE), self.T)

    def caption(self, feats):
        """cap_proj: [.., caption_dim] -> [.., dim]."""
        h = F.linear(feats, self.w["cls_embedding.cap_proj.fc1.weight"])
        return F.linear(F.gelu(h, approximate="tanh"), self.w["cls_embedding.cap_proj.fc2.weight"])

    def forward(self, h, pos, cache, allowed):
        for i in range(self.cfg["n_layer"]):
            h = ref.llama_block(self.w, "layers.%d." % i, h, pos, self.rope, self.n_head,
                                self.eps, cache, i, allowed)
        h = ref.rms_norm(h, self.w["norm.weight"], self.eps)
        return F.linear(h, self.w["output.weight"]).float()

    @torch.no_grad()
    def generate(self, caption_embs, emb_masks, n_tokens=None, cfg_scale=1.0, cfg_interval=-1,
                 temperature=1.0, top_k=0, top_p=1.0, sample=True, generator=None,
                 trace=None, prefill_logits=None):
        """Upstream's generate() for t2i: caption_embs [B, T, caption_dim] and emb_masks
        [B, T] already left-padded (left_pad). Returns tokens [B, n_tokens].

        trace, if a list, receives the guided logits each token was sampled from;
        prefill_logits, if a list, receives the prefill's raw logits [B(*2), V] (cond rows
        first, then uncond)."""
        n_tokens = n_tokens or self.cfg["block_size"]
        batch, T = caption_embs.shape[0], self.T
        use_cfg = cfg_scale > 1.0
        cond = caption_embs.float()
        masks = emb_masks
        if use_cfg:
            null = torch.zeros_like(cond) + self.w["cls_embedding.uncond_embedding"]
            cond = torch.cat([cond, null])
            masks = torch.cat([emb_masks, emb_masks])
        allowed = t2i_allowed(masks, T + n_tokens)
        cache = [None] * self.cfg["n_layer"]

        def pick(logits, guided):
            logits = logits[:, -1, :]
            if prefill_logits is not None and not prefill_logits:
                prefill_logits.append(logits.clone())
            if use_cfg:
                c, u = logits[:batch], logits[batch:]
                logits = u + (c - u) * cfg_scale if guided else c
            if trace is not None:
                trace.append(logits.clone())
            return ref.sample_logits(logits, temperature, top_k, top_p, sample, generator)

        pos = torch.arange(T)
        token = pick(self.forward(self.caption(cond), pos, cache, allowed[:, :T, :T]), True)
        out = [token]
        for step in range(n_tokens - 1):
            guided = not (cfg_interval > -1 and step > cfg_interval)
            fed = torch.cat([token, token]) if use_cfg else token
            p = T + step
            logits = self.forward(self.w["tok_embeddings.weight"][fed], torch.tensor([p]), cache,
                                  allowed[:, p:p + 1, :p + 1])
            token = pick(logits, guided)
            out.append(token)
        return torch.cat(out, dim=1)
