/* error.c - the error table's strings and the helpers that fill a ts_error. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

const char *ts_strerror(int code)
{
    switch (code) {
#define TS_ERROR_CASE(name, value, str) case value: return str;
        TS_ERROR_TABLE(TS_ERROR_CASE)
#undef TS_ERROR_CASE
    }
    return "unknown_error";
}

int ts_fail(ts_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void ts_error_clear(ts_error *err)
{
    if (err) {
        err->code = TS_OK;
        err->msg[0] = '\0';
    }
}
