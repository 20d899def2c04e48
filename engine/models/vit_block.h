/* vit_block.h - the pre-LN transformer block shared by the CLIP text tower and the
 * TA-TiTok decoder (open_clip's ResidualAttentionBlock):
 *
 *   x = x + out_proj(MHA(ln_1(x)))       q, k, v from one in_proj [3W, W] with bias
 *   x = x + c_proj(act(c_fc(ln_2(x))))   act: QuickGELU or exact GELU
 *
 * LayerNorms are affine. Attention is full within each sequence, or causal.
 * Tensor names under a prefix P: P.ln_1.{weight,bias}, P.attn.in_proj_weight,
 * P.attn.in_proj_bias, P.attn.out_proj.{weight,bias}, P.ln_2.*, P.mlp.c_fc.*,
 * P.mlp.c_proj.*.
 */
#ifndef TS_VIT_BLOCK_H
#define TS_VIT_BLOCK_H

#include "../backend.h"
#include "weights.h"

typedef struct vit_dims {
    int width, n_head, mlp;   /* mlp: hidden width of the MLP */
    float eps;
    ts_act act;
} vit_dims;

typedef struct vit_block {
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    ts_wt in_proj, out_proj, fc, proj;
    float *in_proj_b, *out_proj_b, *fc_b, *proj_b;
} vit_block;

/* Activation scratch in backend memory for `rows` rows (see vit_scratch_alloc). */
typedef struct vit_scratch {
    int rows;
    float *h, *qkv, *att, *mlp;
} vit_scratch;

int vit_block_load(ts_wsrc s, const char *prefix, const vit_dims *d, vit_block *b,
                   ts_error *err);
void vit_block_free(ts_backend *be, vit_block *b);   /* safe on a partly loaded block */

int vit_scratch_alloc(ts_backend *be, const vit_dims *d, int rows, vit_scratch *s,
                      ts_error *err);
void vit_scratch_free(ts_backend *be, vit_scratch *s);

/* x: [n_seq * seq_len, width] in backend memory, updated in place. */
void vit_block_forward(ts_backend *be, const vit_block *b, const vit_dims *d, float *x,
                       int n_seq, int seq_len, int causal, vit_scratch *s);

#endif
