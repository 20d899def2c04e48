/* vq_decoder.c - LlamaGen VQ decoder forward over the backend ops; reads side by side
 * with upstream's Decoder, ResnetBlock and AttnBlock. See vq_decoder.h. */
#include "vq_decoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"

#define GN_GROUPS 32
#define GN_EPS 1e-6f

int vq_config_parse(const json_t *vq, vq_config *cfg, ts_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    const char *s = "vq";
    int rc;
    if ((rc = ts_json_int(vq, s, "codebook_size", 1, 1 << 24, &cfg->codebook_size, err)) ||
        (rc = ts_json_int(vq, s, "codebook_embed_dim", 1, 4096, &cfg->embed_dim, err)) ||
        (rc = ts_json_int(vq, s, "z_channels", 1, 65536, &cfg->z_channels, err)) ||
        (rc = ts_json_int(vq, s, "ch", 1, 65536, &cfg->ch, err)) ||
        (rc = ts_json_int_array(vq, s, "ch_mult", 1, 64, cfg->ch_mult, VQ_MAX_LEVELS,
                                &cfg->n_levels, err)) ||
        (rc = ts_json_int(vq, s, "num_res_blocks", 0, 64, &cfg->num_res_blocks, err)) ||
        (rc = ts_json_bool(vq, s, "codebook_l2_norm", &cfg->l2_norm, err)))
        return rc;
    for (int i = 0; i < cfg->n_levels; i++)
        if ((cfg->ch * cfg->ch_mult[i]) % GN_GROUPS)
            return ts_fail(err, TS_ERR_CONFIG, "config: vq channels %d (ch * ch_mult[%d]) are not "
                           "a multiple of the %d GroupNorm groups", cfg->ch * cfg->ch_mult[i], i,
                           GN_GROUPS);
    cfg->downsample = 1 << (cfg->n_levels - 1);
    cfg->n_sub = 1;
    return TS_OK;
}

int vq_config_parse_factorized(const json_t *vq, vq_config *cfg, ts_error *err)
{
    int rc = vq_config_parse(vq, cfg, err);
    if (rc) return rc;
    if (!json_object_get(vq, "n_sub"))
        return ts_fail(err, TS_ERR_CONFIG, "config: missing vq.n_sub (sub-codebooks per "
                       "position: 2 or 3)");
    return ts_json_int(vq, "vq", "n_sub", 2, VQ_MAX_SUB, &cfg->n_sub, err);
}

const char *vq_codebook_name(int n_sub, int j)
{
    static const char *dual[2] = {"quantize_vis", "quantize_sem"};
    static const char *triple[3] = {"quantize_vis", "quantize_sem_mid", "quantize_sem_high"};
    if (n_sub == 2 && j >= 0 && j < 2) return dual[j];
    if (n_sub == 3 && j >= 0 && j < 3) return triple[j];
    return "quantize";
}

/* ------------------------------------------------------------------ loading */

typedef struct loader {
    vq_decoder *d;
    ts_st_file *f;
    ts_error *err;
    char name[160];
} loader;

static int load_conv(loader *L, const char *prefix, int cout, int cin, int k, vq_conv *c)
{
    const ts_st_tensor *t;
    int64_t wshape[4] = {cout, cin, k, k}, bshape[1] = {cout};
    int rc;
    snprintf(L->name, sizeof L->name, "%s.weight", prefix);
    if ((rc = ts_st_get(L->f, L->name, TS_ST_FLOATS, 4, wshape, &t, L->err)) ||
        (rc = ts_be_weight_init(L->d->be, &c->w, t->data, t->dtype, cout, (int64_t)cin * k * k,
                                L->err)))
        return rc;
    c->k = k;
    snprintf(L->name, sizeof L->name, "%s.bias", prefix);
    if ((rc = ts_st_get(L->f, L->name, TS_ST_FLOATS, 1, bshape, &t, L->err))) return rc;
    c->b = ts_be_vec_from(L->d->be, t->data, t->dtype, (size_t)cout);
    return c->b ? TS_OK : ts_fail(L->err, TS_ERR_NOMEM, "out of memory loading %s", L->name);
}

static int load_norm(loader *L, const char *prefix, int c, vq_norm *n)
{
    const ts_st_tensor *t;
    int64_t shape[1] = {c};
    int rc;
    float **dst[2] = {&n->gamma, &n->beta};
    const char *suffix[2] = {"weight", "bias"};
    for (int i = 0; i < 2; i++) {
        snprintf(L->name, sizeof L->name, "%s.%s", prefix, suffix[i]);
        if ((rc = ts_st_get(L->f, L->name, TS_ST_FLOATS, 1, shape, &t, L->err))) return rc;
        *dst[i] = ts_be_vec_from(L->d->be, t->data, t->dtype, (size_t)c);
        if (!*dst[i]) return ts_fail(L->err, TS_ERR_NOMEM, "out of memory loading %s", L->name);
    }
    return TS_OK;
}

static int load_res(loader *L, const char *prefix, int cin, int cout, vq_res *r)
{
    char p[128];
    int rc;
    r->cin = cin;
    r->cout = cout;
#define SUB(x) (snprintf(p, sizeof p, "%s.%s", prefix, x), p)
    if ((rc = load_norm(L, SUB("norm1"), cin, &r->norm1)) ||
        (rc = load_conv(L, SUB("conv1"), cout, cin, 3, &r->conv1)) ||
        (rc = load_norm(L, SUB("norm2"), cout, &r->norm2)) ||
        (rc = load_conv(L, SUB("conv2"), cout, cout, 3, &r->conv2)))
        return rc;
    if (cin != cout && (rc = load_conv(L, SUB("nin_shortcut"), cout, cin, 1, &r->nin))) return rc;
    return TS_OK;
}

static int load_attn(loader *L, const char *prefix, int c, vq_attn *a)
{
    char p[128];
    int rc;
    if ((rc = load_norm(L, SUB("norm"), c, &a->norm)) ||
        (rc = load_conv(L, SUB("q"), c, c, 1, &a->q)) ||
        (rc = load_conv(L, SUB("k"), c, c, 1, &a->k)) ||
        (rc = load_conv(L, SUB("v"), c, c, 1, &a->v)) ||
        (rc = load_conv(L, SUB("proj_out"), c, c, 1, &a->proj_out)))
        return rc;
#undef SUB
    return TS_OK;
}

static int load_codebook(loader *L)
{
    vq_decoder *d = L->d;
    const vq_config *c = &d->cfg;
    int64_t shape[2] = {c->codebook_size, c->embed_dim};
    size_t per = (size_t)c->codebook_size * c->embed_dim;
    d->codebook = malloc((size_t)c->n_sub * per * sizeof *d->codebook);
    if (!d->codebook) return ts_fail(L->err, TS_ERR_NOMEM, "out of memory loading the codebook");
    for (int j = 0; j < c->n_sub; j++) {
        const ts_st_tensor *t;
        snprintf(L->name, sizeof L->name, "%s.embedding.weight", vq_codebook_name(c->n_sub, j));
        int rc = ts_st_get(L->f, L->name, TS_ST_FLOATS, 2, shape, &t, L->err);
        if (rc) return rc;
        float *book = d->codebook + (size_t)j * per;
        ts_to_f32(book, t->data, t->dtype, per);
        if (!c->l2_norm) continue;
        for (int i = 0; i < c->codebook_size; i++) {   /* F.normalize: x / max(||x||, 1e-12) */
            float *row = book + (size_t)i * c->embed_dim;
            float ss = 0.0f;
            for (int e = 0; e < c->embed_dim; e++) ss += row[e] * row[e];
            float nrm = fmaxf(sqrtf(ss), 1e-12f);
            for (int e = 0; e < c->embed_dim; e++) row[e] /= nrm;
        }
    }
    return TS_OK;
}

int vq_decoder_load(ts_backend *be, const vq_config *cfg, ts_st_file *f, vq_decoder **out,
                    ts_error *err)
{
    *out = NULL;
    vq_decoder *d = calloc(1, sizeof *d);
    if (!d) return ts_fail(err, TS_ERR_NOMEM, "out of memory");
    d->cfg = *cfg;
    d->be = be;
    loader L = {d, f, err, {0}};
    const vq_config *c = &d->cfg;
    int nl = c->n_levels;
    int block_in = c->ch * c->ch_mult[nl - 1];
    int rc;
    if ((rc = load_codebook(&L)) ||
        (rc = load_conv(&L, "post_quant_conv", c->z_channels, c->n_sub * c->embed_dim, 1,
                        &d->post_quant_conv)) ||
        (rc = load_conv(&L, "decoder.conv_in", block_in, c->z_channels, 3, &d->conv_in)) ||
        (rc = load_res(&L, "decoder.mid.0", block_in, block_in, &d->mid_res[0])) ||
        (rc = load_attn(&L, "decoder.mid.1", block_in, &d->mid_attn)) ||
        (rc = load_res(&L, "decoder.mid.2", block_in, block_in, &d->mid_res[1])))
        goto fail;
    /* Track the largest activation of one image as the resolution doubles. */
    size_t hw = 1;   /* in units of the token grid's area; scaled in vq_decode */
    d->max_act = (size_t)(block_in > c->z_channels ? block_in : c->z_channels);
    for (int i = 0; i < nl; i++) {
        vq_level *lv = &d->levels[i];
        int block_out = c->ch * c->ch_mult[nl - 1 - i];
        lv->n_res = c->num_res_blocks + 1;
        lv->n_attn = i == 0 ? lv->n_res : 0;
        lv->res = calloc((size_t)lv->n_res, sizeof *lv->res);
        lv->attn = lv->n_attn ? calloc((size_t)lv->n_attn, sizeof *lv->attn) : NULL;
        if (!lv->res || (lv->n_attn && !lv->attn)) {
            rc = ts_fail(err, TS_ERR_NOMEM, "out of memory");
            goto fail;
        }
        for (int j = 0; j < lv->n_res; j++) {
            char p[96];
            snprintf(p, sizeof p, "decoder.conv_blocks.%d.res.%d", i, j);
            if ((rc = load_res(&L, p, block_in, block_out, &lv->res[j]))) goto fail;
            block_in = block_out;
            if (j < lv->n_attn) {
                snprintf(p, sizeof p, "decoder.conv_blocks.%d.attn.%d", i, j);
                if ((rc = load_attn(&L, p, block_in, &lv->attn[j]))) goto fail;
            }
        }
        if ((size_t)block_in * hw > d->max_act) d->max_act = (size_t)block_in * hw;
        if (i != nl - 1) {
            char p[96];
            snprintf(p, sizeof p, "decoder.conv_blocks.%d.upsample.conv", i);
            if ((rc = load_conv(&L, p, block_in, block_in, 3, &lv->upsample))) goto fail;
            hw *= 4;
            if ((size_t)block_in * hw > d->max_act) d->max_act = (size_t)block_in * hw;
        }
    }
    if ((rc = load_norm(&L, "decoder.norm_out", block_in, &d->norm_out)) ||
        (rc = load_conv(&L, "decoder.conv_out", 3, block_in, 3, &d->conv_out)) ||
        (rc = ts_st_check_all_used(f, err)))
        goto fail;
    *out = d;
    return TS_OK;
fail:
    vq_decoder_free(d);
    return rc;
}

static void conv_free(ts_backend *be, vq_conv *c)
{
    ts_be_weight_release(be, &c->w);
    ts_be_free(be, c->b);
}

static void norm_free(ts_backend *be, vq_norm *n)
{
    ts_be_free(be, n->gamma);
    ts_be_free(be, n->beta);
}

static void res_free(ts_backend *be, vq_res *r)
{
    norm_free(be, &r->norm1);
    norm_free(be, &r->norm2);
    conv_free(be, &r->conv1);
    conv_free(be, &r->conv2);
    conv_free(be, &r->nin);
}

static void attn_free(ts_backend *be, vq_attn *a)
{
    norm_free(be, &a->norm);
    conv_free(be, &a->q);
    conv_free(be, &a->k);
    conv_free(be, &a->v);
    conv_free(be, &a->proj_out);
}

static void free_bufs(vq_decoder *d)
{
    for (int i = 0; i < 4; i++) {
        ts_be_free(d->be, d->bufs[i]);
        d->bufs[i] = NULL;
    }
    d->bufs_floats = 0;
}

void vq_decoder_free(vq_decoder *d)
{
    if (!d) return;
    free_bufs(d);
    ts_backend *be = d->be;
    free(d->codebook);
    conv_free(be, &d->post_quant_conv);
    conv_free(be, &d->conv_in);
    conv_free(be, &d->conv_out);
    res_free(be, &d->mid_res[0]);
    res_free(be, &d->mid_res[1]);
    attn_free(be, &d->mid_attn);
    norm_free(be, &d->norm_out);
    for (int i = 0; i < VQ_MAX_LEVELS; i++) {
        vq_level *lv = &d->levels[i];
        for (int j = 0; lv->res && j < lv->n_res; j++) res_free(be, &lv->res[j]);
        for (int j = 0; lv->attn && j < lv->n_attn; j++) attn_free(be, &lv->attn[j]);
        free(lv->res);
        free(lv->attn);
        conv_free(be, &lv->upsample);
    }
    free(d);
}

/* ------------------------------------------------------------------ forward */

/* Scratch for one image: four activation buffers of max_act floats each. */
typedef struct vq_bufs {
    float *a, *b, *t1, *t2;
} vq_bufs;

static void conv(vq_decoder *d, float *out, const float *in, const vq_conv *c, int cin, int h,
                 int w)
{
    int pad = c->k / 2;
    ts_be_conv2d(d->be, out, in, &c->w, c->b, 1, cin, h, w, c->k, 1, pad, pad);
}

/* out = x + conv2(swish(gn2(conv1(swish(gn1(x)))))), with a 1x1 skip when cin != cout. */
static void res_forward(vq_decoder *d, const vq_res *r, float *out, const float *x,
                        float *t1, float *t2, int h, int w)
{
    ts_backend *be = d->be;
    int hw = h * w;
    ts_be_group_norm(be, t1, x, r->norm1.gamma, r->norm1.beta, 1, r->cin, hw, GN_GROUPS, GN_EPS, 1);
    conv(d, t2, t1, &r->conv1, r->cin, h, w);
    ts_be_group_norm(be, t1, t2, r->norm2.gamma, r->norm2.beta, 1, r->cout, hw, GN_GROUPS, GN_EPS, 1);
    conv(d, out, t1, &r->conv2, r->cout, h, w);
    if (r->nin.w.data) {
        conv(d, t2, x, &r->nin, r->cin, h, w);
        ts_be_add(be, out, t2, (size_t)r->cout * hw);
    } else {
        ts_be_add(be, out, x, (size_t)r->cout * hw);
    }
}

/* x += proj_out(attention(q, k, v of gn(x))), single head over all c channels.
 * Needs five c*hw temporaries: t1 and t2 hold two, and `spare` (>= 3*c*hw) the rest. */
static void attn_forward(vq_decoder *d, const vq_attn *a, float *x, float *t1, float *t2,
                         float *spare, int c, int hw)
{
    ts_backend *be = d->be;
    float *q = spare, *k = spare + (size_t)c * hw, *v = spare + 2 * (size_t)c * hw;
    ts_be_group_norm(be, t1, x, a->norm.gamma, a->norm.beta, 1, c, hw, GN_GROUPS, GN_EPS, 0);
    ts_be_conv2d(be, q, t1, &a->q.w, a->q.b, 1, c, hw, 1, 1, 1, 0, 0);
    ts_be_conv2d(be, k, t1, &a->k.w, a->k.b, 1, c, hw, 1, 1, 1, 0, 0);
    ts_be_conv2d(be, v, t1, &a->v.w, a->v.b, 1, c, hw, 1, 1, 1, 0, 0);
    ts_be_spatial_attention(be, t2, q, k, v, 1, c, hw);
    ts_be_conv2d(be, t1, t2, &a->proj_out.w, a->proj_out.b, 1, c, hw, 1, 1, 1, 0, 0);
    ts_be_add(be, x, t1, (size_t)c * hw);
}

uint8_t vq_to_u8(float x)
{
    /* torchvision save_image(normalize, value_range=(-1, 1)): clamp, rescale to [0, 1],
     * then mul(255).add(0.5).clamp(0, 255) and truncate. */
    x = fminf(fmaxf(x, -1.0f), 1.0f);
    float y = (x + 1.0f) / 2.0f;
    y = y * 255.0f + 0.5f;
    y = fminf(fmaxf(y, 0.0f), 255.0f);
    return (uint8_t)y;
}

/* Runs the decoder for one image whose codes are in `codes` (grid*grid). The result
 * [3, H, W] is left in *result (one of the scratch buffers). */
static void decode_one(vq_decoder *d, const int32_t *codes, int grid, vq_bufs *B,
                       float *host_z, float **result)
{
    const vq_config *c = &d->cfg;
    ts_backend *be = d->be;
    int h = grid, w = grid, hw = grid * grid;
    int k = c->n_sub, E = c->embed_dim;
    /* Codebook lookups on the host: NCHW [k * embed_dim, h, w], sub-token j's rows of
     * codebook j in channels [j * E, (j + 1) * E). */
    for (int j = 0; j < k; j++) {
        const float *book = d->codebook + (size_t)j * c->codebook_size * E;
        for (int p = 0; p < hw; p++) {
            int32_t code = codes[(size_t)p * k + j];
            for (int e = 0; e < E; e++)
                host_z[((size_t)j * E + e) * hw + p] =
                    code == VQ_CODE_UNKNOWN ? 0.0f : book[(size_t)code * E + e];
        }
    }
    ts_be_upload(be, B->t1, host_z, (size_t)k * E * hw);
    conv(d, B->t2, B->t1, &d->post_quant_conv, k * E, h, w);
    int ch = c->ch * c->ch_mult[c->n_levels - 1];
    conv(d, B->a, B->t2, &d->conv_in, c->z_channels, h, w);
    float *cur = B->a, *nxt = B->b;
    float *tmp;
#define SWAP() (tmp = cur, cur = nxt, nxt = tmp)
    res_forward(d, &d->mid_res[0], nxt, cur, B->t1, B->t2, h, w);
    SWAP();
    attn_forward(d, &d->mid_attn, cur, B->t1, B->t2, nxt, ch, hw);
    res_forward(d, &d->mid_res[1], nxt, cur, B->t1, B->t2, h, w);
    SWAP();
    for (int i = 0; i < c->n_levels; i++) {
        const vq_level *lv = &d->levels[i];
        for (int j = 0; j < lv->n_res; j++) {
            res_forward(d, &lv->res[j], nxt, cur, B->t1, B->t2, h, w);
            SWAP();
            ch = lv->res[j].cout;
            if (j < lv->n_attn) attn_forward(d, &lv->attn[j], cur, B->t1, B->t2, nxt, ch, hw);
        }
        if (lv->upsample.w.data) {
            ts_be_upsample2x(be, B->t1, cur, 1, ch, h, w);
            h *= 2;
            w *= 2;
            hw = h * w;
            conv(d, nxt, B->t1, &lv->upsample, ch, h, w);
            SWAP();
        }
    }
#undef SWAP
    ts_be_group_norm(be, B->t1, cur, d->norm_out.gamma, d->norm_out.beta, 1, ch, hw, GN_GROUPS,
                     GN_EPS, 1);
    conv(d, nxt, B->t1, &d->conv_out, ch, h, w);
    *result = nxt;
}

int vq_decode(vq_decoder *d, const int32_t *codes, int n, int grid, uint8_t *rgb,
              float *pixels, ts_error *err)
{
    const vq_config *c = &d->cfg;
    if (n <= 0 || grid <= 0 || grid > 4096)
        return ts_fail(err, TS_ERR_INVALID, "vq_decode: bad image count or grid");
    for (size_t i = 0; i < (size_t)n * grid * grid * c->n_sub; i++)
        if (codes[i] < VQ_CODE_UNKNOWN || codes[i] >= c->codebook_size)
            return ts_fail(err, TS_ERR_INVALID, "vq_decode: code %d outside [0, %d)", codes[i],
                           c->codebook_size);
    size_t hw = (size_t)grid * grid;
    size_t act = d->max_act * hw;
    /* The attention spare (3*c*hw at the lowest resolution) fits in one buffer as long
     * as max_act >= 3 * block_in, which conv_out's input alone guarantees only at
     * higher resolutions; size for both. */
    size_t low = 3 * (size_t)c->ch * c->ch_mult[c->n_levels - 1] * hw;
    if (act < low) act = low;
    size_t z_in = (size_t)c->n_sub * c->embed_dim * hw;   /* post_quant_conv's input */
    if (act < z_in) act = z_in;
    int H = grid * c->downsample, W = H;
    size_t npix = (size_t)H * W;
    if (act > d->bufs_floats) {
        free_bufs(d);
        for (int i = 0; i < 4; i++) d->bufs[i] = ts_be_alloc(d->be, act);
        d->bufs_floats = act;
    }
    vq_bufs B = {d->bufs[0], d->bufs[1], d->bufs[2], d->bufs[3]};
    float *host_z = malloc(z_in * sizeof *host_z);
    float *host_out = malloc(3 * npix * sizeof *host_out);
    int rc = TS_OK;
    if (!B.a || !B.b || !B.t1 || !B.t2 || !host_z || !host_out) {
        free_bufs(d);
        rc = ts_fail(err, TS_ERR_NOMEM, "vq_decode: out of memory for %zu MiB of activations",
                     4 * act * sizeof(float) >> 20);
        goto done;
    }
    for (int img = 0; img < n; img++) {
        float *res;
        decode_one(d, codes + (size_t)img * hw * c->n_sub, grid, &B, host_z, &res);
        ts_be_download(d->be, host_out, res, 3 * npix);
        if (pixels) memcpy(pixels + (size_t)img * 3 * npix, host_out, 3 * npix * sizeof(float));
        uint8_t *dst = rgb + (size_t)img * npix * 3;
        for (size_t p = 0; p < npix; p++)
            for (int ch = 0; ch < 3; ch++) dst[p * 3 + ch] = vq_to_u8(host_out[ch * npix + p]);
    }
done:
    free(host_z);
    free(host_out);
    return rc;
}
