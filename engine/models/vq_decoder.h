/* vq_decoder.h - LlamaGen's VQ image decoder (tokenizer/tokenizer_image/vq_model.py
 * upstream): codes -> l2-normalised codebook vectors -> post_quant_conv -> a
 * taming-style convolutional decoder -> RGB in [-1, 1] -> 8-bit.
 *
 * FQGAN's factorized tokenizers (n_sub = 2 or 3 sub-codebooks) share it: each image
 * position carries n_sub codes, one per sub-codebook; their l2-normalised rows are
 * concatenated in sub-token order (channels [j*embed_dim, (j+1)*embed_dim) of
 * post_quant_conv's input belong to sub-token j+1) and the rest is the same decoder.
 * Codebook tensors: LlamaGen "quantize.embedding.weight"; FQGAN (vq_codebook_name)
 * "quantize_vis", "quantize_sem" (dual) or "quantize_vis", "quantize_sem_mid",
 * "quantize_sem_high" (triple), each ".embedding.weight".
 *
 * Decoder layout for ch_mult of length L (VQ-16: [1,1,2,2,4], VQ-8: [1,2,2,4]):
 * conv_in, mid (res, attn, res), then conv_blocks[0..L) from the lowest resolution up,
 * each with num_res_blocks+1 ResnetBlocks (attention after each at the lowest level
 * only) and, except the last, a nearest x2 upsample + 3x3 conv; then GroupNorm, swish
 * and conv_out to 3 channels. GroupNorm has 32 groups and eps 1e-6.
 *
 * Ownership as for llamagen.h: the safetensors file and backend are borrowed.
 */
#ifndef TS_VQ_DECODER_H
#define TS_VQ_DECODER_H

#include <jansson.h>
#include <stdint.h>

#include "../backend.h"
#include "../safetensors.h"

#define VQ_MAX_LEVELS 8
#define VQ_MAX_SUB 3


typedef struct vq_config {
    int codebook_size, embed_dim;   /* per sub-codebook */
    int n_sub;              /* codes per position: 1 (LlamaGen), 2 or 3 (FQGAN) */
    int z_channels, ch;
    int ch_mult[VQ_MAX_LEVELS];
    int n_levels;
    int num_res_blocks;     /* upstream's value; the decoder has one more per level */
    int l2_norm;
    int downsample;         /* 2^(n_levels - 1) */
} vq_config;

typedef struct vq_conv {
    ts_wt w;          /* [cout, cin*k*k] */
    float *b;         /* [cout] */
    int k;
} vq_conv;

typedef struct vq_norm {
    float *gamma, *beta;   /* [c] */
} vq_norm;

typedef struct vq_res {
    int cin, cout;
    vq_norm norm1, norm2;
    vq_conv conv1, conv2;
    vq_conv nin;        /* 1x1 skip when cin != cout, else w.data == NULL */
} vq_res;

typedef struct vq_attn {
    vq_norm norm;
    vq_conv q, k, v, proj_out;
} vq_attn;

typedef struct vq_level {
    int n_res, n_attn;
    vq_res *res;
    vq_attn *attn;
    vq_conv upsample;   /* w.data == NULL at the last level */
} vq_level;

typedef struct vq_decoder {
    vq_config cfg;
    ts_backend *be;
    float *codebook;         /* host [n_sub][codebook_size][embed_dim], rows l2-normalised
                              * at load (when l2_norm) */
    vq_conv post_quant_conv, conv_in, conv_out;
    vq_res mid_res[2];
    vq_attn mid_attn;
    vq_level levels[VQ_MAX_LEVELS];
    vq_norm norm_out;
    size_t max_act;          /* floats of the largest activation of one image */
    /* Activation buffers (backend memory), kept between calls: a GPU allocation and
     * its free (which waits for the device) per decode would cost more than small
     * decodes take. Grown on demand, freed with the decoder. */
    float *bufs[4];
    size_t bufs_floats;
} vq_decoder;

/* LlamaGen's "vq" section (n_sub = 1; an "n_sub" key is ignored). */
int vq_config_parse(const json_t *vq, vq_config *cfg, ts_error *err);
/* FQGAN's: the same keys plus "n_sub" (2 or 3), required. */
int vq_config_parse_factorized(const json_t *vq, vq_config *cfg, ts_error *err);
/* The tensor-name prefix of sub-codebook j (0-based) of n_sub ("quantize" for n_sub 1). */
const char *vq_codebook_name(int n_sub, int j);
int vq_decoder_load(ts_backend *be, const vq_config *cfg, ts_st_file *file, vq_decoder **out,
                    ts_error *err);
void vq_decoder_free(vq_decoder *d);   /* NULL-safe */

/* A code not generated yet (previews): its latent is the zero vector, which decodes
 * to a flat grey-ish region that later steps fill in. */
#define VQ_CODE_UNKNOWN (-1)

/* Decodes n images of grid x grid positions each (raster order) into rgb (host),
 * reusing the decoder's activation buffers (so not concurrently with itself). codes
 * holds n * grid*grid * n_sub ids: image i, position p, sub-token j at
 * codes[(i * grid*grid + p) * n_sub + j] (for n_sub 1 simply the token grid). Output:
 * n * (grid*ds) * (grid*ds) * 3 bytes, HWC. If pixels is non-NULL it also receives the
 * decoder's float output [n, 3, H, W] before the 8-bit mapping. */
int vq_decode(vq_decoder *d, const int32_t *codes, int n, int grid, uint8_t *rgb,
              float *pixels, ts_error *err);

/* upstream's 8-bit mapping (torchvision save_image over [-1, 1]) of one value. */
uint8_t vq_to_u8(float x);

#endif
