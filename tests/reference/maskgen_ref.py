#!/usr/bin/python3
"""fp32 PyTorch reference for MaskGen-VQ text-to-image: CLIP text tower, MM-DiT generator,
TA-TiTok VQ decoder.

Written for Tessera from the behaviour of bytedance/1d-tokenizer (modeling/maskgen.py
MaskGen_VQ, modeling/tatitok.py, modeling/modules/blocks.py), diffusers
(JointTransformerBlock, AdaLayerNormZero, AdaLayerNormContinuous, JointAttnProcessor2_0,
FeedForward "gelu-approximate") and open_clip (CLIP text tower, text_global_pool): read,
not copied. It works functionally over dicts of tensors under upstream's names, and it is
the oracle that the C engine's tests compare against, so every quirk that changes numbers
is kept:

CLIP text tower (ClipTextRef)
- x = token_embedding[ids] + positional_embedding; pre-LN blocks (LayerNorm eps 1e-5,
  nn.MultiheadAttention with a causal mask, MLP c_fc -> act -> c_proj); act is QuickGELU
  (x * sigmoid(1.702 x), OpenAI weights under open_clip <= 2.27) or exact GELU (>= 2.29).
- Three outputs: the penultimate hidden states (after block L-1 of L, no ln_final: the
  generator's sequence condition), ln_final over all context positions (TA-TiTok's text
  guidance) and the pooled vector ln_final[argmax(ids)] @ text_projection.

MaskGen_VQ (MaskGenRef)
- x = embeddings[ids] + pos_embed; context = text_embed_proj(penultimate);
  temb = cond_pooled_proj([pooled | sinusoid(aesthetic * 100)]) with the [sin | cos]
  embedding of max period 1000, exponents divided by half_dim.
- Blocks: adaLN-Zero on SiLU(temb) chunked shift, scale, gate, shift, scale, gate; non-affine
  LayerNorm eps 1e-6; joint attention over [image ; text] (image first, no mask); tanh-GELU
  MLPs x4. The last block is context_pre_only: the text stream is normed by a 2-way
  AdaLayerNormContinuous (scale, then shift), still gives K/V (and queries that are thrown
  away), and is not updated. Final AdaLayerNormContinuous (scale, shift), then logits =
  x @ embeddings[:codebook_size].T (the tied head, no bias).
- generate(): upstream's MaskGen_VQ.generate step for step (see its docstring).

TA-TiTok decoder (TaTiTokDecoderRef)
- codebook lookup [B, N, token_size] -> decoder_embed; sequence [class, grid^2 mask tokens]
  + positional_embedding, then the N latents + latent_token_positional_embedding, then
  text_guidance_proj(text) + text_guidance_positional_embedding; ln_pre; pre-LN blocks
  (exact GELU, eps 1e-5); ln_post on the grid positions; ffn.0 1x1 conv to patch^2 * 3
  channels; depth-to-space with channel index (p1 * patch + p2) * 3 + c; conv_out 3x3.
- to_uint8: clamp(0, 1) * 255, truncated (a cast, not rounding), HWC.

Load a converted folder with load_model_dir(), or official state dicts with the
from_official() constructors.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
sys.path.insert(0, os.path.join(_ROOT, "tools"))
sys.path.insert(0, _HERE)
import clip_tokenizer_ref  # noqa: E402
import convert  # noqa: E402
import stfile  # noqa: E402


def _checked_fp32(weights, expected, what):
    convert.check_keys(weights, expected, what)
    return {k: v.detach().to(torch.float32) for k, v in weights.items()}


def layer_norm(x, w, name, eps):
    """LayerNorm over the last axis; w[name + ".weight"/".bias"] when name is given."""
    if name is None:
        return F.layer_norm(x, (x.shape[-1],), None, None, eps)
    return F.layer_norm(x, (x.shape[-1],), w[name + ".weight"], w[name + ".bias"], eps)


def linear(x, w, name):
    return F.linear(x, w[name + ".weight"], w.get(name + ".bias"))


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def attention(q, k, v, n_head, mask=None):
    """q [B, S, D], k/v [B, T, D] -> [B, S, D]: softmax(q k^T / sqrt(hd) + mask) v."""
    b, s, d = q.shape
    hd = d // n_head
    q = q.reshape(b, s, n_head, hd).transpose(1, 2)
    k = k.reshape(b, k.shape[1], n_head, hd).transpose(1, 2)
    v = v.reshape(b, v.shape[1], n_head, hd).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    if mask is not None:
        scores = scores + mask
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(b, s, d)


def residual_attention_block(w, p, x, n_head, act, eps, mask=None):
    """open_clip / TiTok ResidualAttentionBlock (nn.MultiheadAttention semantics)."""
    h = layer_norm(x, w, p + "ln_1", eps)
    q, k, v = F.linear(h, w[p + "attn.in_proj_weight"], w[p + "attn.in_proj_bias"]).chunk(3, -1)
    x = x + linear(attention(q, k, v, n_head, mask), w, p + "attn.out_proj")
    h = act(linear(layer_norm(x, w, p + "ln_2", eps), w, p + "mlp.c_fc"))
    return x + linear(h, w, p + "mlp.c_proj")


# ---------------------------------------------------------------------------------------
# CLIP text tower


class ClipTextRef:
    """open_clip's CLIP text half over official names (text_projection [width, proj])."""

    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.w = _checked_fp32(weights, convert.clip_text_shapes(cfg), "CLIP")
        self.act = {"quick_gelu": quick_gelu, "gelu": F.gelu}[cfg["act"]]
        self.eps = cfg.get("norm_eps", convert.CLIP_NORM_EPS)
        n = cfg["context_length"]
        self.mask = torch.full((n, n), float("-inf")).triu_(1)

    @classmethod
    def from_official(cls, state_dict, act="quick_gelu", n_head=None):
        sd = convert.drop_unused_clip(state_dict)
        return cls(convert.infer_clip_config(sd, act, n_head), sd)

    @classmethod
    def from_tessera(cls, cfg, weights):
        """From clip_text.safetensors: text_projection.weight [proj, width] is transposed
        back to the official parameter."""
        w = dict(weights)
        w["text_projection"] = w.pop("text_projection.weight").t()
        return cls(cfg, w)

    @torch.no_grad()
    def encode(self, ids):
        """ids [B, context] -> (penultimate [B, ctx, W], final [B, ctx, W], pooled [B, P])."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        x = self.w["token_embedding.weight"][ids] + self.w["positional_embedding"]
        n_layer = self.cfg["n_layer"]
        penultimate = None
        for i in range(n_layer):
            if i == n_layer - 1:
                penultimate = x
            x = residual_attention_block(self.w, "transformer.resblocks.%d." % i, x,
                                         self.cfg["n_head"], self.act, self.eps, self.mask)
        final = layer_norm(x, self.w, "ln_final", self.eps)
        pooled = final[torch.arange(final.shape[0]), ids.argmax(dim=-1)]
        return penultimate, final, pooled @ self.w["text_projection"]


# ---------------------------------------------------------------------------------------
# MaskGen_VQ


def sinusoidal_embedding(timesteps, dim, max_period=convert.AESTHETIC_MAX_PERIOD):
    """MaskGen_VQ.get_sinusoidal_encoding: [sin | cos], exponents over half_dim, fp32."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32)
    exponent = exponent / half
    emb = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def uniform_noise(shape):
    """The default noise provider: torch's global RNG, as upstream's uniform_(0, 1)."""
    return torch.zeros(shape, dtype=torch.float32).uniform_(0, 1)


def gumbel(u):
    """-log(-log(u)) with upstream's clamp of each log's argument at 1e-20."""
    return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))


class MaskGenRef:
    """MaskGen_VQ over upstream-named fp32 weights (embeddings.weight is also the head)."""

    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.w = _checked_fp32(weights, convert.maskgen_shapes(cfg), "generator")
        self.dim, self.n_head, self.depth = cfg["dim"], cfg["n_head"], cfg["depth"]
        self.codebook_size = cfg["codebook_size"]
        self.mask_id = self.codebook_size
        self.num_tokens = cfg["num_tokens"]
        self.eps = cfg.get("norm_eps", convert.MASKGEN_NORM_EPS)
        self.sampling = dict(convert.MASKGEN_SAMPLING, **cfg.get("sampling", {}))

    @classmethod
    def from_official(cls, state_dict, codebook_size, upstream_config=None, n_head=None):
        sd = convert.untie_lm_head(dict(state_dict))
        cfg, _ = convert.infer_maskgen_config(sd, upstream_config, codebook_size, n_head)
        return cls(cfg, sd)

    def _modulation(self, name, temb, chunks):
        return linear(F.silu(temb), self.w, name).chunk(chunks, dim=1)

    def _ff(self, p, x):
        h = F.gelu(linear(x, self.w, p + "net.0.proj"), approximate="tanh")
        return linear(h, self.w, p + "net.2")

    def _block(self, i, x, c, temb):
        p = "blocks.%d." % i
        last = i == self.depth - 1
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = self._modulation(
            p + "norm1.linear", temb, 6)
        nx = layer_norm(x, None, None, self.eps) * (1 + scale[:, None]) + shift[:, None]
        if last:    # AdaLayerNormContinuous: scale first, then shift
            c_scale, c_shift = self._modulation(p + "norm1_context.linear", temb, 2)
            nc = layer_norm(c, None, None, self.eps) * (1 + c_scale)[:, None, :] + \
                c_shift[:, None, :]
        else:
            (c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp,
             c_gate_mlp) = self._modulation(p + "norm1_context.linear", temb, 6)
            nc = layer_norm(c, None, None, self.eps) * (1 + c_scale[:, None]) + c_shift[:, None]
        a = p + "attn."
        q = torch.cat([linear(nx, self.w, a + "to_q"), linear(nc, self.w, a + "add_q_proj")], 1)
        k = torch.cat([linear(nx, self.w, a + "to_k"), linear(nc, self.w, a + "add_k_proj")], 1)
        v = torch.cat([linear(nx, self.w, a + "to_v"), linear(nc, self.w, a + "add_v_proj")], 1)
        out = attention(q, k, v, self.n_head)
        n_img = x.shape[1]
        x = x + gate[:, None] * linear(out[:, :n_img], self.w, a + "to_out.0")
        nx = layer_norm(x, None, None, self.eps) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        x = x + gate_mlp[:, None] * self._ff(p + "ff.", nx)
        if last:
            return None, x
        c = c + c_gate[:, None] * linear(out[:, n_img:], self.w, a + "to_add_out")
        nc = layer_norm(c, None, None, self.eps) * (1 + c_scale_mlp[:, None]) + \
            c_shift_mlp[:, None]
        c = c + c_gate_mlp[:, None] * self._ff(p + "ff_context.", nc)
        return c, x

    def conditioning(self, cond_pooled, aesthetic):
        """temb [B, dim] from the pooled CLIP vector [B, P] and aesthetic scores [B] (fp32;
        upstream multiplies by 100 in fp32 before the sinusoid)."""
        scores = torch.as_tensor(aesthetic, dtype=torch.float32)
        emb = sinusoidal_embedding(scores * 100, self.cfg["micro_cond_dim"],
                                   self.cfg.get("aesthetic_max_period",
                                                convert.AESTHETIC_MAX_PERIOD))
        return linear(torch.cat([cond_pooled, emb], dim=-1), self.w, "cond_pooled_proj")

    @torch.no_grad()
    def forward(self, ids, cond, cond_pooled, aesthetic):
        """ids [B, N] (mask id = codebook_size), cond [B, ctx, text_dim] (CLIP penultimate),
        cond_pooled [B, text_dim], aesthetic [B] -> logits [B, N, codebook_size]."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        emb = self.w["embeddings.weight"]
        x = emb[ids] + self.w["pos_embed"][:, :ids.shape[1]]
        c = linear(cond, self.w, "text_embed_proj")
        temb = self.conditioning(cond_pooled, aesthetic)
        for i in range(self.depth):
            c, x = self._block(i, x, c, temb)
        scale, shift = self._modulation("norm.linear", temb, 2)
        x = layer_norm(x, None, None, self.eps) * (1 + scale)[:, None, :] + shift[:, None, :]
        return torch.matmul(x, emb[:self.codebook_size].t())

    @torch.no_grad()
    def generate(self, cond, cond_pooled, null_cond, null_pooled, guidance_scale=None,
                 randomize_temperature=None, aesthetic=None, steps=None,
                 guidance_decay=None, guidance_decay_scale_pow=1.0,
                 softmax_temperature_annealing=None, prob_sorting=True, noise=None,
                 trace=None):
        """Upstream's MaskGen_VQ.generate on precomputed CLIP features: returns ids [B, N].

        cond/cond_pooled: the prompts' CLIP penultimate states and pooled vectors;
        null_cond/null_pooled: CLIP("")'s ([1, ...] or [B, ...]). Defaults come from the
        config's sampling section. aesthetic is the score upstream takes from its config
        (the call's own argument is only a flag there). Per step s, with r = (s+1)/steps:
          - cosine guidance w = (g - 1) * (1 - cos(pi * r^pow)) * 1 / 2 + 1 in fp32 tensors;
            the batch is [cond; uncond] and logits = cond + (cond - uncond) * w (when w != 0;
            upstream crashes on its no-guidance branch with micro-conditioning, so do we);
          - logits /= 0.5 + 0.8 (1 - r) (annealing) or the annealed noise temperature
            t = randomize_temperature * (1 - r);
          - sampled = argmax(logits + t * gumbel(u1)), u1 of shape [B, N, codebook];
          - confidence = chosen scaled logit (+inf where already fixed) + t * gumbel(u2),
            u2 of shape [B, N];
          - mask_len = floor(N * arccos(r) / (pi/2)) in fp32, clamped to
            [1, masked_in_row0 - 1], from the first row only; every position whose
            confidence is <= the row's mask_len-th smallest is re-masked (ties re-mask more);
          - the last step takes every sampled id.
        noise(shape) -> float32 uniform [0, 1) tensor is called for u1 then u2 every step
        (default: torch's global RNG, as upstream); with randomize_temperature == 0 it is
        never called and nothing random happens (t = 0 adds exactly 0).
        trace, if a list, receives one dict per step (see _trace_step)."""
        s = self.sampling
        g = s["guidance"] if guidance_scale is None else guidance_scale
        temp0 = s["randomize_temperature"] if randomize_temperature is None \
            else randomize_temperature
        aes = s["aesthetic"] if aesthetic is None else aesthetic
        steps = s["steps"] if steps is None else steps
        decay = s["guidance_decay"] if guidance_decay is None else guidance_decay
        anneal = s["softmax_temperature_annealing"] if softmax_temperature_annealing is None \
            else softmax_temperature_annealing
        if decay not in ("linear", "cosine", "none", "flippedcosine"):
            raise ValueError("guidance_decay %r" % decay)
        noise = noise or uniform_noise

        b = cond.shape[0]
        n = self.num_tokens
        null_cond = null_cond.expand(b, -1, -1)
        null_pooled = null_pooled.expand(b, -1)
        both_cond = torch.cat([cond, null_cond])
        both_pooled = torch.cat([cond_pooled, null_pooled])
        scores = torch.full((2 * b,), float(aes), dtype=torch.float32)
        ids = torch.full((b, n), self.mask_id, dtype=torch.long)
        cfg_scale = g if decay == "none" else 0.0

        def add_gumbel(t, temperature):
            if temp0 == 0:
                return t
            return t + temperature * gumbel(noise(tuple(t.shape)).to(torch.float32))

        for step in range(steps):
            ratio = 1.0 * (step + 1) / steps
            annealed_temp = temp0 * (1.0 - ratio)
            is_mask = ids == self.mask_id
            pow_t = torch.ones(1) * guidance_decay_scale_pow
            if decay == "cosine":
                scale_step = (1 - torch.cos((ratio ** pow_t) * torch.pi)) * 1 / 2
                cfg_scale = (g - 1) * scale_step + 1
            elif decay == "flippedcosine":
                scale_step = (torch.cos((ratio ** pow_t) * torch.pi)) * 1 / 2
                cfg_scale = (g - 1) * scale_step + 1
            elif decay == "linear":
                cfg_scale = ratio * (g - 1) + 1
            if not bool(torch.as_tensor(cfg_scale != 0).all()):
                raise ValueError("guidance 0: upstream's unguided branch drops the aesthetic "
                                 "micro-condition and fails")
            logits = self.forward(torch.cat([ids, ids]), both_cond, both_pooled, scores)
            cond_logits, uncond_logits = logits[:b], logits[b:]
            logits = cond_logits + (cond_logits - uncond_logits) * cfg_scale
            softmax_temperature = 0.5 + 0.8 * (1 - ratio) if anneal else annealed_temp
            logits = logits / softmax_temperature

            sampled_ids = add_gumbel(logits, annealed_temp).argmax(dim=-1)
            sampled_logits = torch.gather(logits, -1, sampled_ids[..., None])[..., 0]
            sampled_ids = torch.where(is_mask, sampled_ids, ids)
            sampled_logits = torch.where(is_mask, sampled_logits,
                                         torch.tensor(float("inf"))).float()

            mask_ratio = torch.acos(torch.tensor(ratio)) / (math.pi * 0.5)
            mask_len = torch.floor(n * mask_ratio)
            mask_len = torch.maximum(torch.Tensor([1]),
                                     torch.minimum(is_mask.sum(-1, keepdim=True) - 1,
                                                   mask_len))[0].squeeze()
            confidence = add_gumbel(sampled_logits, annealed_temp) if prob_sorting \
                else sampled_logits
            sorted_confidence, _ = torch.sort(confidence, dim=-1)
            k = int(mask_len.long())
            cut_off = sorted_confidence[:, k - 1:k]
            masking = confidence <= cut_off
            if step == steps - 1:
                ids = sampled_ids
            else:
                ids = torch.where(masking, torch.tensor(self.mask_id), sampled_ids)
            if trace is not None:
                trace.append({"logits": logits, "is_mask": is_mask, "sampled": sampled_ids,
                              "confidence": confidence, "mask_len": k, "masking": masking,
                              "ids": ids.clone(), "guidance": float(torch.as_tensor(
                                  cfg_scale).reshape(-1)[0]), "last": step == steps - 1})
        return ids


# ---------------------------------------------------------------------------------------
# TA-TiTok decoder (VQ)


class TaTiTokDecoderRef:
    """TA-TiTok's text-aware ViT decoder over upstream names (quantize.* and decoder.*)."""

    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.w = _checked_fp32(weights, convert.tatitok_decoder_shapes(cfg), "tokenizer")
        self.eps = cfg.get("norm_eps", convert.TITOK_NORM_EPS)

    @classmethod
    def from_official(cls, state_dict, upstream_config=None, n_head=None):
        cfg, sd = convert.infer_tatitok_config(dict(state_dict), upstream_config, n_head)
        return cls(cfg, sd)

    @torch.no_grad()
    def decode_tokens(self, tokens, text_guidance):
        """tokens [B, N] codebook ids, text_guidance [B, ctx, text_dim] (CLIP ln_final)
        -> image [B, 3, H, W] before clamping (about [0, 1])."""
        c, w = self.cfg, self.w
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        b, n = tokens.shape
        grid, width, patch = c["grid_size"], c["width"], c["patch_size"]
        p = "decoder."
        z = w["quantize.embedding.weight"][tokens]                      # [B, N, token_size]
        x = linear(z, w, p + "decoder_embed")
        mask_tokens = w[p + "mask_token"].expand(b, grid * grid, width)
        head = torch.cat([w[p + "class_embedding"].expand(b, 1, width), mask_tokens], dim=1)
        head = head + w[p + "positional_embedding"]
        x = x + w[p + "latent_token_positional_embedding"][:n]
        text = linear(text_guidance, w, p + "text_guidance_proj") + \
            w[p + "text_guidance_positional_embedding"]
        x = torch.cat([head, x, text], dim=1)
        x = layer_norm(x, w, p + "ln_pre", self.eps)
        for i in range(c["n_layer"]):
            x = residual_attention_block(w, p + "transformer.%d." % i, x, c["n_head"], F.gelu,
                                         self.eps)
        x = layer_norm(x[:, 1:1 + grid * grid], w, p + "ln_post", self.eps)
        x = x.permute(0, 2, 1).reshape(b, width, grid, grid)
        x = F.conv2d(x, w[p + "ffn.0.weight"], w[p + "ffn.0.bias"])     # [B, p*p*3, g, g]
        # depth-to-space: channel (p1 * patch + p2) * 3 + ch -> pixel (h*patch+p1, w*patch+p2)
        x = x.reshape(b, patch, patch, 3, grid, grid).permute(0, 3, 4, 1, 5, 2)
        x = x.reshape(b, 3, grid * patch, grid * patch)
        return F.conv2d(x, w[p + "conv_out.weight"], w[p + "conv_out.bias"], padding=1)


def to_uint8(images):
    """[B, 3, H, W] about [0, 1] -> uint8 [B, H, W, 3]: clamp, * 255, truncate."""
    return (torch.clamp(images, 0.0, 1.0) * 255.0).permute(0, 2, 3, 1).to(torch.uint8)


# ---------------------------------------------------------------------------------------


class MaskGenPipelineRef:
    """Prompt -> image as upstream's demo chains it (CLIP, generate, decode)."""

    def __init__(self, tokenizer, clip, generator, decoder, config=None):
        self.tokenizer, self.clip = tokenizer, clip
        self.generator, self.decoder = generator, decoder
        self.config = config

    def encode(self, prompts):
        ids = self.tokenizer.tokenize(list(prompts), self.clip.cfg["context_length"])
        return (ids,) + self.clip.encode(ids)

    @torch.no_grad()
    def text_to_image(self, prompts, trace=None, **kwargs):
        """Returns (tokens [B, N], image [B, 3, H, W] before clamping)."""
        _, penult, final, pooled = self.encode(prompts)
        _, null_penult, _, null_pooled = self.encode([""])
        tokens = self.generator.generate(penult, pooled, null_penult, null_pooled,
                                         trace=trace, **kwargs)
        return tokens, self.decoder.decode_tokens(tokens, final)


def load_model_dir(path):
    """Loads a Tessera maskgen folder: returns MaskGenPipelineRef (with .config)."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    if config.get("family") != "maskgen":
        raise ValueError("%s: not a maskgen model folder" % path)
    c, g, t = config["clip"], config["generator"], config["tokenizer"]
    tokenizer = clip_tokenizer_ref.ClipTokenizer.from_file(os.path.join(path, c["vocab_file"]))
    if tokenizer.vocab_size != c["vocab_size"]:
        raise ValueError("%s: %s has vocabulary %d, config says %d"
                         % (path, c["vocab_file"], tokenizer.vocab_size, c["vocab_size"]))
    clip = ClipTextRef.from_tessera(c, stfile.load(os.path.join(path, c["file"])))
    generator = MaskGenRef(g, stfile.load(os.path.join(path, g["file"])))
    decoder = TaTiTokDecoderRef(t, stfile.load(os.path.join(path, t["file"])))
    return MaskGenPipelineRef(tokenizer, clip, generator, decoder, config)
