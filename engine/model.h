/* model.h - a model folder on disk (config.json + safetensors) loaded into memory.
 *
 * ts_model_load reads config.json, maps each safetensors file it names (plain file
 * names inside the folder only), and builds the family's networks on the backend.
 * The model owns the mappings and networks; ts_model_free releases all of them. The
 * backend is borrowed and must outlive the model.
 */
#ifndef TS_MODEL_H
#define TS_MODEL_H

#include <jansson.h>

#include "backend.h"
#include "sampler.h"
#include "masked_model.h"
#include "models/far.h"
#include "models/llamagen.h"
#include "models/vq_decoder.h"
#include "t2i.h"

typedef enum ts_family {
    TS_FAMILY_LLAMAGEN,   /* autoregressive: gpt (+ vq); class-conditional, or text-
                           * conditional (gpt->cfg.t2i) with its T5 in t2i */
    TS_FAMILY_MASKGEN,    /* text-to-image masked: masked */
    TS_FAMILY_FQGAN,      /* class-conditional factorized autoregressive: far (optional) + vq
                           * with n_sub sub-codebooks */
} ts_family;

typedef struct ts_model {
    ts_family family;
    char *dir;
    char *name;              /* config "name", or the folder */
    int image_size;
    ts_backend *be;
    ts_st_file *gpt_file, *vq_file;
    llamagen_model *gpt;     /* LlamaGen only */
    ts_t2i_text *t2i;        /* a t2i LlamaGen's tokenizer and T5 encoder, else NULL */
    far_model *far;          /* FQGAN only; NULL for a decode-only folder */
    vq_decoder *vq;          /* NULL for a GPT-only LlamaGen folder: tokens, no images */
    ts_masked_model *masked; /* the maskgen family's networks, else NULL */
    ts_gen_params gen_defaults;  /* LlamaGen, FQGAN: the sampling a request or the CLI
                                  * gets when it names none; upstream's sample_c2i.py values
                                  * (cfg 4, top-k 2000, top-p 1, temperature 1; t2i:
                                  * sample_t2i.py's cfg 7.5, top-k 1000) unless
                                  * config.json's "sampling" object overrides them */
} ts_model;

int ts_model_load(ts_backend *be, const char *dir, ts_model **out, ts_error *err);
void ts_model_free(ts_model *m);   /* NULL-safe */

/* The autoregressive generator's sizes (classes, positions, grid, vocabulary per
 * codebook): LlamaGen's GPT (class- or text-conditional: see cfg.t2i) or FQGAN's FAR
 * trunk; NULL when the folder has none (MaskGen, a decode-only FQGAN folder). Borrowed
 * from the model. */
const llamagen_config *ts_model_c2i_config(const ts_model *m);
/* Codes per image position: FQGAN's n_sub (2 or 3), else 1. An image's codes are
 * [block_size][n_sub], position-major (vq_decode's layout). */
int ts_model_n_sub(const ts_model *m);
/* Whether m is LlamaGen text-to-image (prompts, no classes). */
int ts_model_is_t2i(const ts_model *m);

/* dir/<section.key>, refusing anything but a plain file name; the caller frees *out. */
int ts_model_file_path(const char *dir, const json_t *section, const char *sname,
                       const char *key, char **out, ts_error *err);
/* Opens the safetensors file that section.file names, inside dir. */
int ts_model_open_weights(const char *dir, const json_t *section, const char *sname,
                          ts_st_file **out, ts_error *err);

#endif
