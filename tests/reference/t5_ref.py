#!/usr/bin/python3
"""An fp32 PyTorch reference of Hugging Face's T5EncoderModel (last_hidden_state), the
text encoder of LlamaGen's text-to-image models (FLAN-T5-XL). Written from the model's
definition, not from transformers (not installed here); bench/check_t5_ref_vs_hf.py
compares it with transformers on a machine that has it.

    enc = T5EncoderRef.from_hf(hf_config_dict, state_dict)      # HF names and config
    enc = T5EncoderRef.from_section(t5_section_dict, state_dict)  # Tessera's config.json
    hidden = enc(input_ids, attention_mask)                     # [B, T, d_model] float32

The semantics reproduced (dropout off):
  - x = shared[input_ids], not scaled;
  - each block: x += o(attn(ln0(x))); x += ff(ln1(x)); then final_layer_norm;
  - layer norm (T5LayerNorm): weight * (x * rsqrt(mean(x^2) + eps)), no mean, no bias,
    statistics in float32;
  - attention: scores = q k^T, not scaled by 1/sqrt(d_kv), plus the position bias and the
    mask, softmax in float32, times v; heads of d_kv, n_head * d_kv may differ from d_model;
  - position bias: layer 0's relative_attention_bias [buckets, n_head] looked up by the
    bucket of key_pos - query_pos (relative_bucket), computed once and added in every layer;
  - mask: (1 - attention_mask) * finfo(float32).min added to every padded key column of
    every query row; padded query rows are computed like the others;
  - ff: act(wi_0 x) * wi_1 x (gated) or act(wi x), then wo; "gated-gelu" is the tanh GELU
    ("gelu_new").
"""
import math

import torch


def _gelu_tanh(x):
    """HF's gelu_new: the tanh approximation, in this order of operations."""
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))
    return 0.5 * x * (1.0 + torch.tanh(inner))


# HF's dense_act_fn names -> the function (gelu_new is the tanh approximation)
ACTIVATIONS = {
    "gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh, "gelu_tanh": _gelu_tanh,
    "gelu": torch.nn.functional.gelu, "relu": torch.relu, "silu": torch.nn.functional.silu,
    "swish": torch.nn.functional.silu,
}


def hf_ff_activation(cfg):
    """(activation name, gated) from an HF T5 config dict, as T5Config reads them."""
    proj = cfg.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    gated = parts[0] == "gated" and len(parts) == 2
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    return cfg.get("dense_act_fn", act), cfg.get("is_gated_act", gated)


def relative_bucket(rel, num_buckets, max_distance):
    """Bidirectional T5 bucket of relative positions rel (an integer tensor, key - query).

    The buckets split in two halves by the sign of rel (rel > 0 in the upper half). In a
    half of h buckets, |rel| < h // 2 has a bucket of its own; larger distances share
    logarithmically wider buckets up to max_distance, computed on float32 tensors as HF
    does (so the truncation to an integer falls where HF's does); all farther distances
    go to the half's last bucket."""
    half = num_buckets // 2
    exact = half // 2
    base = (rel > 0).long() * half
    dist = rel.abs()
    # log of a float32 ratio, scaled so that max_distance maps to `half`
    ratio = dist.float() / exact
    log_bucket = exact + (torch.log(ratio) / math.log(max_distance / exact)
                          * (half - exact)).long()
    log_bucket = torch.clamp(log_bucket, max=half - 1)
    return base + torch.where(dist < exact, dist, log_bucket)


def position_bias(table, T, num_buckets, max_distance):
    """[1, n_head, T, T] bias from table [num_buckets, n_head] for T positions."""
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    buckets = relative_bucket(k - q, num_buckets, max_distance)
    return table[buckets].permute(2, 0, 1).unsqueeze(0)


class T5EncoderRef(torch.nn.Module):
    def __init__(self, sizes, act, gated, state_dict):
        """sizes: d_model, d_kv, n_head, n_layer, rel_buckets, rel_max_distance, norm_eps;
        state_dict: HF names (shared.weight or encoder.embed_tokens.weight, encoder.*)."""
        super().__init__()
        self.s = dict(sizes)
        self.act = ACTIVATIONS[act]
        self.gated = bool(gated)
        sd = {k: v.detach().to(torch.float32) for k, v in state_dict.items()}
        if "shared.weight" not in sd:
            sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
        self.w = sd

    @classmethod
    def from_hf(cls, cfg, state_dict):
        act, gated = hf_ff_activation(cfg)
        sizes = {"d_model": cfg["d_model"], "d_kv": cfg["d_kv"], "n_head": cfg["num_heads"],
                 "n_layer": cfg["num_layers"],
                 "rel_buckets": cfg.get("relative_attention_num_buckets", 32),
                 "rel_max_distance": cfg.get("relative_attention_max_distance", 128),
                 "norm_eps": cfg.get("layer_norm_epsilon", 1e-6)}
        return cls(sizes, act, gated, state_dict)

    @classmethod
    def from_section(cls, sec, state_dict):
        return cls(sec, sec["ff_act"], sec["ff_gated"], state_dict)

    def _norm(self, x, name):
        var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return self.w[name] * (x * torch.rsqrt(var + self.s["norm_eps"]))

    def _linear(self, x, name):
        return x @ self.w[name].t()

    def forward(self, input_ids, attention_mask=None):
        s, w = self.s, self.w
        B, T = input_ids.shape
        H, dk = s["n_head"], s["d_kv"]
        if attention_mask is None:
            attention_mask = torch.ones(B, T)
        x = w["shared.weight"][input_ids.long()]
        table = w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        bias = position_bias(table, T, s["rel_buckets"], s["rel_max_distance"])
        pad = (1.0 - attention_mask.to(torch.float32))[:, None, None, :]
        bias = bias + pad * torch.finfo(torch.float32).min      # [B, H, T, T]
        for i in range(s["n_layer"]):
            p = "encoder.block.%d.layer." % i
            h = self._norm(x, p + "0.layer_norm.weight")

            def heads(name):
                return self._linear(h, p + "0.SelfAttention.%s.weight" % name) \
                    .view(B, T, H, dk).transpose(1, 2)
            q, k, v = heads("q"), heads("k"), heads("v")
            scores = q @ k.transpose(-1, -2) + bias
            probs = torch.softmax(scores.float(), dim=-1)
            att = (probs @ v).transpose(1, 2).reshape(B, T, H * dk)
            x = x + self._linear(att, p + "0.SelfAttention.o.weight")
            h = self._norm(x, p + "1.layer_norm.weight")
            if self.gated:
                f = self.act(self._linear(h, p + "1.DenseReluDense.wi_0.weight")) \
                    * self._linear(h, p + "1.DenseReluDense.wi_1.weight")
            else:
                f = self.act(self._linear(h, p + "1.DenseReluDense.wi.weight"))
            x = x + self._linear(f, p + "1.DenseReluDense.wo.weight")
        return self._norm(x, "encoder.final_layer_norm.weight")


def lengths_mask(lens, T):
    """attention_mask [B, T]: lens[i] ones, then zeros (right padding)."""
    lens = torch.as_tensor(lens)
    return (torch.arange(T)[None, :] < lens[:, None]).to(torch.long)
