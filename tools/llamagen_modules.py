"""Trainable LlamaGen modules (PyTorch), for the small default model Tessera ships.

The architectures of FoundationVision/LlamaGen (tokenizer/tokenizer_image/vq_model.py and
autoregressive/models/gpt.py), written again from their math with the same parameter
names and shapes, so that a state dict saved from here is an official-layout checkpoint:
tools/convert.py reads it exactly as it reads the published ones. Only what training
needs is here; inference is Tessera's (and tests/reference/llamagen_ref.py's).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------
# VQ tokenizer


def _group_norm(c):
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = _group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """One-head attention over the pixels of a feature map."""

    def __init__(self, c):
        super().__init__()
        self.norm = _group_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(b, c, hgt * wid) for m in (self.q, self.k, self.v))
        attn = torch.softmax(q.transpose(1, 2) @ k * c ** -0.5, dim=-1)
        return x + self.proj_out((v @ attn.transpose(1, 2)).reshape(b, c, hgt, wid))


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))   # upstream pads right and bottom only


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(c):
    return nn.ModuleList([ResBlock(c, c), AttnBlock(c), ResBlock(c, c)])


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        c, last = ch, len(ch_mult) - 1
        for level, mult in enumerate(ch_mult):
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                block.res.append(ResBlock(c, ch * mult))
                c = ch * mult
                if level == last:
                    block.attn.append(AttnBlock(c))
            if level != last:
                block.downsample = Downsample(c)
            self.conv_blocks.append(block)
        self.mid = _mid(c)
        self.norm_out = _group_norm(c)
        self.conv_out = nn.Conv2d(c, z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.conv_blocks:
            for i, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[i](h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels):
        super().__init__()
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        self.mid = _mid(c)
        self.conv_blocks = nn.ModuleList()
        last = len(ch_mult) - 1
        for level in reversed(range(len(ch_mult))):
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                block.res.append(ResBlock(c, ch * ch_mult[level]))
                c = ch * ch_mult[level]
                if level == last:
                    block.attn.append(AttnBlock(c))
            if level != 0:
                block.upsample = Upsample(c)
            self.conv_blocks.append(block)
        self.norm_out = _group_norm(c)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for block in self.conv_blocks:
            for i, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[i](h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantizer(nn.Module):
    """l2-normalised codebook; the straight-through estimator carries the gradient."""

    def __init__(self, n, dim, beta=0.25):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(n, dim)
        self.embedding.weight.data.uniform_(-1.0 / n, 1.0 / n)
        self.embedding.weight.data = F.normalize(self.embedding.weight.data, dim=-1)
        self.register_buffer("codebook_used", torch.zeros(65536))  # upstream's usage buffer

    def codebook(self):
        return F.normalize(self.embedding.weight, dim=-1)

    def forward(self, z):
        """z [B, C, H, W] -> (quantized z, codes [B, H*W], codebook + commitment loss)."""
        b, c, hgt, wid = z.shape
        z = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, c), dim=-1)
        book = self.codebook()
        codes = torch.argmax(z @ book.t(), dim=1)   # nearest on the sphere = max cosine
        zq = book[codes]
        loss = torch.mean((zq - z.detach()) ** 2) + self.beta * torch.mean((zq.detach() - z) ** 2)
        zq = z + (zq - z).detach()
        zq = zq.reshape(b, hgt, wid, c).permute(0, 3, 1, 2)
        return zq, codes.reshape(b, hgt * wid), loss

    def lookup(self, codes, grid):
        zq = self.codebook()[codes]
        return zq.reshape(codes.shape[0], grid, grid, -1).permute(0, 3, 1, 2)


class VQModel(nn.Module):
    def __init__(self, codebook_size, codebook_embed_dim, ch, ch_mult, num_res_blocks,
                 z_channels):
        super().__init__()
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels)
        self.quantize = Quantizer(codebook_size, codebook_embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)

    def encode(self, x):
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, zq):
        return self.decoder(self.post_quant_conv(zq))

    def forward(self, x):
        zq, codes, loss = self.encode(x)
        return self.decode(zq), codes, loss


# ---------------------------------------------------------------------------------------
# GPT (class-conditional)


def ffn_dim(dim, multiple_of=256):
    """Upstream's hidden width: 2/3 of 4*dim, rounded up to a multiple."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def rope_2d(grid, head_dim, base=10000.0, cls_token_num=1):
    """cos and sin [cls + grid^2, head_dim/2]: the first half of the pairs turn by the row,
    the second by the column; the class position does not turn (zeros, as upstream)."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    t = torch.outer(torch.arange(grid).float(), freqs)
    angles = torch.cat([t[:, None, :].expand(grid, grid, -1),
                        t[None, :, :].expand(grid, grid, -1)], dim=-1).reshape(grid * grid, half)
    pad = torch.zeros(cls_token_num, half)
    return torch.cat([pad, torch.cos(angles)]), torch.cat([pad, torch.sin(angles)])


def _rotate(x, cos, sin):
    """x [B, S, H, D] rotated pairwise (x[2j], x[2j+1]) by cos/sin [S, D/2]."""
    a, b = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(3)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin, mask):
        b, s, d = x.shape
        q, k, v = self.wqkv(x).split(d, dim=-1)
        shape = (b, s, self.n_head, d // self.n_head)
        q = _rotate(q.reshape(shape), cos, sin).transpose(1, 2)
        k = _rotate(k.reshape(shape), cos, sin).transpose(1, 2)
        v = v.reshape(shape).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.n_head)
        out = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v
        return self.wo(out.transpose(1, 2).reshape(b, s, d))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Layer(nn.Module):
    def __init__(self, dim, n_head, hidden):
        super().__init__()
        self.attention = Attention(dim, n_head)
        self.feed_forward = FeedForward(dim, hidden)
        self.attention_norm = RMSNorm(dim)
        self.ffn_norm = RMSNorm(dim)

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class LabelEmbedding(nn.Module):
    """num_classes + 1 rows: the last is the null class that classifier-free guidance uses."""

    def __init__(self, num_classes, dim, dropout):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels):
        if self.training and self.dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class GPT(nn.Module):
    def __init__(self, vocab_size, num_classes, block_size, dim, n_layer, n_head,
                 class_dropout=0.1):
        super().__init__()
        self.block_size = block_size
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.cls_embedding = LabelEmbedding(num_classes, dim, class_dropout)
        self.layers = nn.ModuleList(Layer(dim, n_head, ffn_dim(dim)) for _ in range(n_layer))
        self.norm = RMSNorm(dim)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        grid = math.isqrt(block_size)
        cos, sin = rope_2d(grid, dim // n_head)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        nn.init.zeros_(self.output.weight)   # upstream starts the head at zero

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, labels, tokens):
        """Teacher forcing: logits [B, L, V] for tokens [B, L] given the class prefix."""
        h = torch.cat([self.cls_embedding(labels)[:, None, :],
                       self.tok_embeddings(tokens[:, :-1])], dim=1)
        s = h.shape[1]
        mask = torch.ones(s, s, dtype=torch.bool, device=h.device).triu(1)
        for layer in self.layers:
            h = layer(h, self.rope_cos[:s], self.rope_sin[:s], mask)
        return self.output(self.norm(h))


def gpt_checkpoint(model):
    """The official layout: {"model": state dict} with upstream's freqs_cis left out
    (the converter drops it anyway)."""
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
