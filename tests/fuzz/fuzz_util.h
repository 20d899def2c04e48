/* fuzz_util.h - helpers shared by the libFuzzer targets in tests/fuzz/.
 *
 * FZ_CHECK turns a broken invariant into an abort, which libFuzzer records as a crash
 * with the input that caused it. fz_memfile gives bytes a path (a memfd under
 * /proc/self/fd) for loaders that only take a path, without touching the disk.
 * Targets run from the repository root: fixtures are found relative to it.
 */
#ifndef TS_FUZZ_UTIL_H
#define TS_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FZ_CHECK(cond, ...)                                                             \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                               \
            fputc('\n', stderr);                                                        \
            abort();                                                                    \
        }                                                                               \
    } while (0)

/* A memfd holding data[0..n); path (at least 32 bytes) gets a name fopen/open accept.
 * Returns the fd, which the caller closes, or aborts: a fuzzer cannot go on without it. */
static inline int fz_memfile(const uint8_t *data, size_t n, char *path, size_t cap)
{
    int fd = memfd_create("fuzz", MFD_CLOEXEC);
    FZ_CHECK(fd >= 0, "memfd_create failed");
    for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, data + off, n - off);
        FZ_CHECK(w > 0, "write to memfd failed");
        off += (size_t)w;
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

/* A fixture under tests/fixtures/, which must exist: the targets run from the root. */
static inline const char *fz_fixture(const char *rel)
{
    if (access(rel, R_OK) != 0) {
        fprintf(stderr, "fuzz: %s not found: run the fuzzer from the repository root\n", rel);
        abort();
    }
    return rel;
}

/* 1 when s[0..n) is valid UTF-8 (no overlong forms, surrogates or values past U+10FFFF).
 * Written apart from engine/text/unicode.c's ts_utf8_char on purpose: it is the oracle
 * for what that code produces, so a bug there must not pass its own check. */
static inline int fz_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                   : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!len || i + len > n) return 0;
        uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += len;
    }
    return 1;
}

#endif
