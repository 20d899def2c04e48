/* numparse.h - strict parsing of command-line numbers: the whole string must be the
 * number, with no overflow, or the call fails. Shared by the CLI commands and tools. */
#ifndef TS_NUMPARSE_H
#define TS_NUMPARSE_H

/* A base-10 integer in [lo, hi] into *out; -1 (and *out untouched) otherwise. */
int ts_parse_long(const char *s, long lo, long hi, long *out);
/* A finite float into *out; -1 otherwise. */
int ts_parse_float(const char *s, float *out);

#endif
