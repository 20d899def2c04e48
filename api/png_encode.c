/* png_encode.c - see png_encode.h. libpng reports errors by longjmp; every resource
 * the jump can skip over is owned by the `sink` or freed after setjmp returns. */
#include "png_encode.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sink {
    uint8_t *buf;
    size_t len, cap;
    int oom;
} sink;

static void sink_write(png_structp png, png_bytep data, png_size_t n)
{
    sink *s = png_get_io_ptr(png);
    if (s->oom) return;
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 65536;
        while (cap < s->len + n) cap *= 2;
        uint8_t *nb = realloc(s->buf, cap);
        if (!nb) {
            s->oom = 1;
            return;
        }
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, n);
    s->len += n;
}

static void sink_flush(png_structp png) { (void)png; }

int ts_png_encode(const uint8_t *rgb, int w, int h, const ts_png_text *text, int n_text,
                  uint8_t **out, size_t *len, ts_error *err)
{
    *out = NULL;
    *len = 0;
    if (w <= 0 || h <= 0) return ts_fail(err, TS_ERR_INVALID, "png: empty image");
    sink s = {0};
    png_textp chunks = n_text > 0 ? calloc((size_t)n_text, sizeof *chunks) : NULL;
    if (n_text > 0 && !chunks) return ts_fail(err, TS_ERR_NOMEM, "png: out of memory");
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        free(chunks);
        return ts_fail(err, TS_ERR_NOMEM, "png: out of memory");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(chunks);
        free(s.buf);
        return ts_fail(err, TS_ERR_INTERNAL, "png: libpng failed to encode");
    }
    png_set_write_fn(png, &s, sink_write, sink_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (int i = 0; i < n_text; i++) {
        int ascii = 1;
        for (const unsigned char *c = (const unsigned char *)text[i].value; *c; c++)
            ascii &= *c < 0x80;
        chunks[i].compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
        chunks[i].key = (png_charp)text[i].key;
        chunks[i].text = (png_charp)text[i].value;
    }
    if (n_text > 0) png_set_text(png, info, chunks, n_text);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * w * 3));
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(chunks);
    if (s.oom) {
        free(s.buf);
        return ts_fail(err, TS_ERR_NOMEM, "png: out of memory");
    }
    *out = s.buf;
    *len = s.len;
    return TS_OK;
}

int ts_png_write_file(const char *path, const uint8_t *rgb, int w, int h,
                      const ts_png_text *text, int n_text, ts_error *err)
{
    uint8_t *buf;
    size_t len;
    int rc = ts_png_encode(rgb, w, h, text, n_text, &buf, &len, err);
    if (rc) return rc;
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(buf);
        return ts_fail(err, TS_ERR_IO, "%s: cannot create", path);
    }
    size_t wrote = fwrite(buf, 1, len, f);
    int close_rc = fclose(f);
    free(buf);
    if (wrote != len || close_rc != 0) return ts_fail(err, TS_ERR_IO, "%s: write failed", path);
    return TS_OK;
}

void ts_png_parameters(char *buf, size_t cap, const char *model, int class_id, int index,
                       const ts_gen_params *p)
{
    snprintf(buf, cap,
             "model=%s; class=%d; image_index=%d; seed=%llu; cfg=%g; cfg_interval=%g; "
             "top_k=%d; top_p=%g; temperature=%g",
             model, class_id, index, (unsigned long long)(p->seed + (uint64_t)index),
             p->cfg_scale, p->cfg_interval, p->sample.top_k, p->sample.top_p,
             p->sample.temperature);
}

void ts_png_t2i_parameters(char *buf, size_t cap, const char *model, const char *prompt,
                           int index, const ts_gen_params *p)
{
    snprintf(buf, cap,
             "model=%s; prompt=%s; image_index=%d; seed=%llu; cfg=%g; cfg_interval=%g; "
             "top_k=%d; top_p=%g; temperature=%g",
             model, prompt, index, (unsigned long long)(p->seed + (uint64_t)index),
             p->cfg_scale, p->cfg_interval, p->sample.top_k, p->sample.top_p,
             p->sample.temperature);
}

void ts_png_mask_parameters(char *buf, size_t cap, const char *model, const char *prompt,
                            int index, const ts_mask_params *p, uint64_t seed)
{
    snprintf(buf, cap,
             "model=%s; prompt=%s; image_index=%d; seed=%llu; guidance=%g; "
             "randomize_temperature=%g; aesthetic=%g; steps=%d",
             model, prompt, index, (unsigned long long)(seed + (uint64_t)index), p->guidance,
             p->randomize_temperature, p->aesthetic, p->steps);
}
