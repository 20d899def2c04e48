#!/usr/bin/python3
"""Generates engine/text/unicode_tables.c: the Unicode and HTML data that the CLIP
tokenizer's cleanup and pre-tokenizer need (engine/text/unicode_tables.h declares it).

    /usr/bin/python3 tools/gen_unicode_tables.py [--out engine/text/unicode_tables.c]

Everything comes from this Python's own data (unicodedata, str.lower, str.isspace,
html.entities, html.unescape's private tables), so that the C side agrees with the
Python the upstream tokenizer runs on. The Unicode version is written into the file.
If the `regex` module is importable, the letter/number classes are also checked against
what CLIP's pattern (compiled with IGNORECASE) actually matches.
"""
import argparse
import html
import html.entities
import os
import sys
import unicodedata

MAX_CP = 0x110000
ALL = [cp for cp in range(MAX_CP) if not 0xD800 <= cp <= 0xDFFF]

# Class codes, as in unicode_tables.h.
OTHER, LETTER, NUMBER, SPACE, SKIP = 0, 1, 2, 3, 4


def runs(pred):
    """Inclusive ranges of code points where pred(cp) is true."""
    out = []
    for cp in ALL:
        if pred(cp):
            if out and out[-1][1] == cp - 1:
                out[-1][1] = cp
            else:
                out.append([cp, cp])
    return out


def valued_runs(value):
    """Inclusive ranges of equal non-zero value(cp): [lo, hi, v]."""
    out = []
    for cp in ALL:
        v = value(cp)
        if v:
            if out and out[-1][1] == cp - 1 and out[-1][2] == v:
                out[-1][1] = cp
            else:
                out.append([cp, cp, v])
    return out


def char_class(cp):
    c = chr(cp)
    if cp == 0x0345:
        # COMBINING GREEK YPOGEGRAMMENI folds to a letter (iota), so under IGNORECASE
        # neither [\p{L}] nor [^\s\p{L}\p{N}] matches it: CLIP's split drops it.
        return SKIP
    if c.isspace():
        return SPACE
    cat = unicodedata.category(c)
    if cat[0] == "L":
        return LETTER
    if cat[0] == "N":
        return NUMBER
    return OTHER


def check_against_regex(classes):
    try:
        import regex
    except ImportError:
        print("gen_unicode_tables: regex module absent, class check skipped",
              file=sys.stderr)
        return
    let = regex.compile(r"[\p{L}]", regex.IGNORECASE)
    num = regex.compile(r"[\p{N}]", regex.IGNORECASE)
    oth = regex.compile(r"[^\s\p{L}\p{N}]", regex.IGNORECASE)
    bad = []
    for cp in ALL:
        c = chr(cp)
        if unicodedata.category(c) == "Cn":
            continue        # unassigned here; the regex module may know a newer Unicode
        got = classes[cp]
        want = (LETTER if let.match(c) else NUMBER if num.match(c) else
                OTHER if oth.match(c) else None)
        if want is None:
            want = SPACE if got == SPACE else SKIP
        # U+001C-001F are str.isspace() but not regex \s; cleanup removes them first.
        if got != want and not (0x1C <= cp <= 0x1F and got == SPACE):
            bad.append(cp)
    if bad:
        raise SystemExit("class mismatch with the regex module at %s" %
                         ", ".join("U+%04X" % cp for cp in bad[:20]))


def lower_runs():
    """Single-code-point lower-case mappings as [lo, hi, stride, delta] runs."""
    pairs = []
    for cp in ALL:
        lo = chr(cp).lower()
        if cp in (0x0130, 0x03A3):
            continue        # multi-character / context-dependent: handled in code
        assert len(lo) == 1, hex(cp)
        if ord(lo) != cp:
            pairs.append((cp, ord(lo) - cp))
    out = []
    for cp, d in pairs:
        if out:
            lo, hi, stride, delta = out[-1]
            if delta == d:
                if lo == hi and cp - hi in (1, 2):
                    out[-1] = [lo, cp, cp - hi, delta]
                    continue
                if cp - hi == stride:
                    out[-1][1] = cp
                    continue
        out.append([cp, cp, 1, d])
    return out


def sigma_props():
    """The two properties str.lower's Final_Sigma rule consults, recovered from its own
    behaviour: c + SIGMA lowers to a final sigma iff c is Cased and not Case_Ignorable;
    'A' + c + SIGMA does iff c is Case_Ignorable (skipped) or that. Returns (cased and
    not ignorable, ignorable): the rule skips ignorables before asking about casedness,
    so that is all it needs."""
    cased, ignorable = set(), set()
    for cp in ALL:
        c = chr(cp)
        if (c + "\u03a3").lower().endswith("\u03c2"):
            cased.add(cp)
        elif ("A" + c + "\u03a3").lower().endswith("\u03c2"):
            ignorable.add(cp)
    return cased, ignorable


def nfc_data():
    """Single-level canonical decompositions ([cp, first, second or 0]), the indices of
    the two-part ones that recompose (primary composites, exclusions left out) sorted by
    (first, second), and the non-zero combining classes as runs."""
    decomp = []
    for cp in ALL:
        if 0xAC00 <= cp <= 0xD7A3:
            continue        # Hangul syllables are algorithmic
        d = unicodedata.decomposition(chr(cp))
        if not d or d.startswith("<"):
            continue
        parts = [int(x, 16) for x in d.split()]
        assert len(parts) in (1, 2), hex(cp)
        decomp.append([cp, parts[0], parts[1] if len(parts) == 2 else 0])
    compose = [i for i, (cp, a, b) in enumerate(decomp)
               if b and unicodedata.normalize("NFC", chr(cp)) == chr(cp)]
    compose.sort(key=lambda i: (decomp[i][1], decomp[i][2]))
    # Check the run-time recursion reproduces Python's NFD.
    table = {cp: (a, b) for cp, a, b in decomp}

    def full(cp):
        if cp not in table:
            return [cp]
        a, b = table[cp]
        return full(a) + (full(b) if b else [])
    for cp, _, _ in decomp:
        nfd = unicodedata.normalize("NFD", chr(cp))
        assert [ord(x) for x in nfd] == full(cp), hex(cp)
    ccc = valued_runs(lambda cp: unicodedata.combining(chr(cp)))
    return decomp, compose, ccc


ENT_SEMI, ENT_BARE, ENT_FTFY_UPPER = 1, 2, 4


def html_tables():
    """HTML5 entities keyed by name without ';' with flag bits (ENT_*), the values
    ftfy's upper-cased spelling gives where value.upper() differs, html.unescape's
    numeric fix-ups and the numeric references it drops."""
    h5 = html.entities.html5
    names = sorted({k.rstrip(";") for k in h5}, key=lambda k: k.encode())
    rows, upper = [], []
    for i, n in enumerate(names):
        flags = 0
        value = h5.get(n + ";", h5.get(n))
        if n + ";" in h5:
            flags |= ENT_SEMI
        if n in h5:
            flags |= ENT_BARE
            assert h5[n] == value
        if n + ";" in h5 and n == n.lower():
            spelled = "&" + n.upper() + ";"
            if html.unescape(spelled) == spelled:
                flags |= ENT_FTFY_UPPER
                if value.upper() != value:
                    upper.append((i, value.upper()))
        rows.append((n, flags, value))
    charrefs = sorted(html._invalid_charrefs.items())
    bad_cps = sorted(html._invalid_codepoints)
    return rows, upper, charrefs, bad_cps


def fmt_rows(items, per_line, indent="    "):
    lines = []
    for i in range(0, len(items), per_line):
        lines.append(indent + " ".join(items[i:i + per_line]))
    return "\n".join(lines)


def c_string(s):
    return '"' + "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else
                         "\\x%02x" % ord(c) for c in s) + '"'


def cps2(value):
    cps = [ord(c) for c in value]
    assert 1 <= len(cps) <= 2, value
    return cps + [0] * (2 - len(cps))


def cps3(value):
    cps = [ord(c) for c in value]
    assert 1 <= len(cps) <= 3, value
    cps += [0] * (3 - len(cps))
    return cps


def main():
    ap = argparse.ArgumentParser()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "engine/text/unicode_tables.c"))
    args = ap.parse_args()

    classes = {cp: char_class(cp) for cp in ALL}
    check_against_regex(classes)
    class_runs = valued_runs(lambda cp: classes[cp])
    lower = lower_runs()
    cased, ignorable = sigma_props()
    cased_r = runs(lambda cp: cp in cased)
    ignorable_r = runs(lambda cp: cp in ignorable)
    decomp, compose, ccc = nfc_data()
    html5, upper, charrefs, bad_cps = html_tables()
    bad_r = runs(lambda cp: cp in set(bad_cps))
    width = []
    for cp in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(cp))
        if alt != chr(cp):
            assert len(alt) <= 2
            width.append((cp, [ord(x) for x in alt] + [0] * (2 - len(alt))))

    assert sorted(cp for cp, _ in charrefs if 0x80 <= cp <= 0x9F) == list(range(0x80, 0xA0))
    for cp, v in charrefs:       # ftfy's sloppy-1252 agrees with html's C1 table
        if 0x80 <= cp <= 0x9F:
            try:
                want = bytes([cp]).decode("cp1252")
            except UnicodeDecodeError:
                want = chr(cp)
            assert v == want, hex(cp)

    o = []
    o.append("/* unicode_tables.c - GENERATED by tools/gen_unicode_tables.py; do not edit.")
    o.append(" *")
    o.append(" * Unicode %s (Python %d.%d's unicodedata), Python's html.entities.html5"
             % (unicodedata.unidata_version, sys.version_info[0], sys.version_info[1]))
    o.append(" * and html.unescape's tables. See unicode_tables.h for what each table is. */")
    o.append('#include "engine/text/unicode_tables.h"')
    o.append("")
    o.append('const char ts_uni_version[] = "%s";' % unicodedata.unidata_version)
    o.append("")

    def emit_ranges3(name, rows, per_line=6):
        o.append("const ts_uni_range3 %s[] = {" % name)
        o.append(fmt_rows(["{%d,%d,%d}," % tuple(r) for r in rows], per_line))
        o.append("};")
        o.append("const int %s_n = %d;" % (name, len(rows)))
        o.append("")

    def emit_ranges(name, rows, per_line=8):
        o.append("const ts_uni_range %s[] = {" % name)
        o.append(fmt_rows(["{%d,%d}," % tuple(r) for r in rows], per_line))
        o.append("};")
        o.append("const int %s_n = %d;" % (name, len(rows)))
        o.append("")

    emit_ranges3("ts_uni_class", class_runs, 6)
    o.append("const ts_uni_lower_run ts_uni_lower_runs[] = {")
    o.append(fmt_rows(["{%d,%d,%d,%d}," % tuple(r) for r in lower], 5))
    o.append("};")
    o.append("const int ts_uni_lower_runs_n = %d;" % len(lower))
    o.append("")
    emit_ranges("ts_uni_cased", cased_r)
    emit_ranges("ts_uni_case_ignorable", ignorable_r)
    emit_ranges3("ts_uni_ccc_runs", ccc)

    o.append("const ts_uni_decomp ts_uni_decomp_table[] = {")
    o.append(fmt_rows(["{%d,%d,%d}," % tuple(r) for r in decomp], 6))
    o.append("};")
    o.append("const int ts_uni_decomp_table_n = %d;" % len(decomp))
    o.append("")
    o.append("const uint16_t ts_uni_compose_index[] = {")
    o.append(fmt_rows(["%d," % i for i in compose], 16))
    o.append("};")
    o.append("const int ts_uni_compose_index_n = %d;" % len(compose))
    o.append("")
    o.append("const ts_uni_width ts_uni_width_map[] = {")
    o.append(fmt_rows(["{%d,{%d,%d}}," % (cp, v[0], v[1]) for cp, v in width], 6))
    o.append("};")
    o.append("const int ts_uni_width_map_n = %d;" % len(width))
    o.append("")
    o.append("const ts_html_entity ts_html_entities[] = {")
    o.append(fmt_rows(['{%s,%d,{%d,%d}},' % ((c_string(n), f) + tuple(cps2(v)))
                       for n, f, v in html5], 5))
    o.append("};")
    o.append("const int ts_html_entities_n = %d;" % len(html5))
    o.append("")
    o.append("const ts_html_upper ts_html_ftfy_upper_values[] = {")
    o.append(fmt_rows(["{%d,{%d,%d,%d}}," % ((i,) + tuple(cps3(v))) for i, v in upper], 5))
    o.append("};")
    o.append("const int ts_html_ftfy_upper_values_n = %d;" % len(upper))
    o.append("")
    o.append("const ts_uni_pair ts_html_charref_fixups[] = {")
    o.append(fmt_rows(["{%d,%d}," % (k, ord(v)) for k, v in charrefs], 5))
    o.append("};")
    o.append("const int ts_html_charref_fixups_n = %d;" % len(charrefs))
    o.append("")
    emit_ranges("ts_html_dropped_charrefs", bad_r)

    text = "\n".join(o)
    with open(args.out, "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    print("wrote %s (%d bytes)" % (args.out, len(text)), file=sys.stderr)


if __name__ == "__main__":
    main()
