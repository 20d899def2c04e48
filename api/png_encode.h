/* png_encode.h - 8-bit RGB images to PNG bytes (libpng), with tEXt chunks carrying
 * the generation parameters. */
#ifndef TS_PNG_ENCODE_H
#define TS_PNG_ENCODE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"
#include "engine/generate.h"
#include "engine/masked.h"

typedef struct ts_png_text {
    const char *key;     /* 1-79 Latin-1 characters, as PNG requires */
    const char *value;   /* ASCII goes in a tEXt chunk; anything else is taken as UTF-8
                            and goes in an iTXt chunk (tEXt is Latin-1 only) */
} ts_png_text;

/* Encodes rgb (h rows of w*3 bytes) into a malloc'd buffer *out of *len bytes that
 * the caller frees. */
int ts_png_encode(const uint8_t *rgb, int w, int h, const ts_png_text *text, int n_text,
                  uint8_t **out, size_t *len, ts_error *err);

/* The "parameters" text of image `index` of a request with params p (whose seed is
 * the request's; the image's own is p->seed + index). The CLI and the server write the
 * same text, so the same request gives the same PNG bytes from either. */
void ts_png_parameters(char *buf, size_t cap, const char *model, int class_id, int index,
                       const ts_gen_params *p);

/* The same for image `index` of a LlamaGen text-to-image request for prompt. */
void ts_png_t2i_parameters(char *buf, size_t cap, const char *model, const char *prompt,
                           int index, const ts_gen_params *p);

/* The same for image `index` of a MaskGen request for prompt with parameters p and
 * seed (the request's; the image's own is seed + index). */
void ts_png_mask_parameters(char *buf, size_t cap, const char *model, const char *prompt,
                            int index, const ts_mask_params *p, uint64_t seed);

/* Encodes and writes to path. */
int ts_png_write_file(const char *path, const uint8_t *rgb, int w, int h,
                      const ts_png_text *text, int n_text, ts_error *err);

#endif
