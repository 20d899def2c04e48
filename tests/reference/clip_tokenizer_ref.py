#!/usr/bin/python3
"""Reference for CLIP's byte-level BPE text tokenizer, as MaskGen feeds it to CLIP.

Written for Tessera from the behaviour of OpenAI CLIP's `simple_tokenizer.py` and
open_clip's `SimpleTokenizer` (read, not copied). engine/text/clip_tokenizer.c must
produce the same ids; tests/reference/make_clip_golden.py writes the goldens it is
checked against.

    tok = ClipTokenizer.from_file("bpe_simple_vocab_16e6.txt.gz")   # or clip_bpe.txt
    tok.encode("A photo of a cat")          -> [320, 1125, 539, 320, 2368]
    tok.tokenize(["a cat", ""], 77)         -> torch.LongTensor [2, 77]

The pipeline, in upstream's order:
  1. cleanup: ftfy.fix_text, html.unescape twice, strip, whitespace runs -> one space,
     lower-case (Python's str.lower, final sigma included);
  2. split with CLIP's regex (special tokens, contractions, letter runs, single digits,
     runs of everything else; whitespace is dropped);
  3. each piece's UTF-8 bytes become "byte symbols" (bytes_to_unicode), the last one
     carrying "</w>", and merges are applied lowest rank first until none applies;
  4. tokenize(): [sot] + ids + [eot], cut to context_length with eot in the last slot,
     zero padded.

Cleanup comes in two flavours (`cleaner=`):
  "ftfy"   - the real ftfy.fix_text (needs the ftfy package; not in Debian bookworm);
  "subset" - this file's own implementation of the subset of ftfy that the C tokenizer
             implements (see SUBSET_NOTES below); deterministic whatever is installed,
             so the committed goldens are generated with it;
  "auto"   - "ftfy" when importable, else "subset" (the default).

Special tokens: the regex recognises the special tokens' literal spellings in prompts.
OpenAI CLIP (and open_clip before 2.21) spell them "<|startoftext|>"/"<|endoftext|>"
(`specials="clip"`, the default); open_clip 2.21 and later spell them
"<start_of_text>"/"<end_of_text>" (`specials="open_clip"`). The ids are the same (the
last two); only prompts that contain one of these strings tokenize differently.
"""
import gzip
import html
import html.entities
import os
import unicodedata

import regex

# ---------------------------------------------------------------------------------------
# Vocabulary layout

N_CLIP_MERGES = 49152 - 256 - 2     # lines [1 : 48895] of the official file
CLIP_VOCAB_SIZE = 49408              # 256 + 256 + 48894 + 2
END_OF_WORD = "</w>"

SPECIAL_SPELLINGS = {
    "clip": ("<|startoftext|>", "<|endoftext|>"),
    "open_clip": ("<start_of_text>", "<end_of_text>"),
}


def byte_symbol_table():
    """Returns (order, sym): `order` lists the 256 byte values in vocabulary order and
    sym[b] is the one-character string byte b is spelled with. Printable Latin-1 bytes
    stand for themselves; the other 68 (controls, space, 0x7F-0xA0, 0xAD) are moved to
    U+0100.. in increasing byte order so that no symbol is whitespace or a control."""
    printable = (list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) +
                 list(range(0xAE, 0x100)))
    sym = {b: chr(b) for b in printable}
    order = list(printable)
    nxt = 0x100
    for b in range(256):
        if b not in sym:
            sym[b] = chr(nxt)
            nxt += 1
            order.append(b)
    return order, [sym[b] for b in range(256)]


BYTE_ORDER, BYTE_SYM = byte_symbol_table()


def _ftfy_or_none():
    try:
        import ftfy  # noqa: F401
        return ftfy
    except ImportError:
        return None


# ---------------------------------------------------------------------------------------
# Cleanup, "subset" flavour. Mirrors engine/text/clip_tokenizer.c exactly.

SUBSET_NOTES = """\
ftfy.fix_text steps reproduced (ftfy 6.x order, per line, repeated until nothing changes):
  unescape_html    HTML5 named entities with ';' (plus ftfy's upper-cased variants such
                   as &NTILDE;) and &#N; / &#xH; numeric ones, only on text whose line
                   has no '<' (once a line has one, ftfy stops unescaping for the rest);
  fix_c1_controls  U+0080-U+009F read as Windows-1252;
  fix_latin_ligatures  the 22 Latin ligatures/digraphs ftfy splits (fi, fl, ij, dz...);
  fix_character_width  full-width/half-width forms U+FF01-U+FFEF to NFKC, U+3000 to ' ';
  uncurl_quotes    U+02BC, U+2018-U+201B to ', U+201C-U+201F to ";
  fix_line_breaks  CRLF, CR, U+2028, U+2029, U+0085 to LF;
  remove_terminal_escapes  ESC [ digits/; letter (ASCII digits only; ftfy's \\d also
                   takes other decimal digits);
  remove_control_chars  U+0000-0008, 000B, 000E-001F, 007F, 206A-206F, FEFF, FFF9-FFFC;
  NFC normalization.
Not reproduced: fix_encoding (mojibake repair: 'cafÃ©' stays as is), with its
restore_byte_a0 / replace_lossy_sequences / decode_inconsistent_utf8 sub-steps, and
fix_surrogates (cannot arise from valid UTF-8).
Then, like upstream: html.unescape twice (Python's full HTML5 rules), strip,
whitespace runs to one space (str.split's whitespace), str.lower()."""

_FTFY_ENTITY_RE = regex.compile(r"&#?[0-9A-Za-z]{1,24};")
_ANSI_RE = regex.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _ftfy_entity_table():
    """ftfy's entity table: every HTML5 name that ends in ';', plus the upper-cased
    spelling of all-lower-case names when Python's own unescape leaves that spelling
    alone (so &EACUTE; is É but &AMP; stays &AMP; since that is a real entity)."""
    table = {}
    for name, value in html.entities.html5.items():
        if not name.endswith(";"):
            continue
        table["&" + name] = value
        if name == name.lower():
            upper = "&" + name.upper()
            if html.unescape(upper) == upper:
                table[upper] = value.upper()
    return table


_FTFY_ENTITIES = _ftfy_entity_table()


def _ftfy_unescape(text):
    def one(m):
        s = m.group(0)
        if s in _FTFY_ENTITIES:
            return _FTFY_ENTITIES[s]
        if s.startswith("&#"):
            out = html.unescape(s)
            return s if ";" in out else out
        return s
    return _FTFY_ENTITY_RE.sub(one, text)


def _cp1252_c1(c):
    """The character Windows-1252 gives byte ord(c) (for C1 controls); bytes 1252 leaves
    undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) stay themselves, as in ftfy's sloppy codec."""
    try:
        return bytes([ord(c)]).decode("cp1252")
    except UnicodeDecodeError:
        return c


_LIGATURES = {
    0x0132: "IJ", 0x0133: "ij", 0x0149: "\u02bcn", 0x01F1: "DZ", 0x01F2: "Dz",
    0x01F3: "dz", 0x01C4: "D\u017d", 0x01C5: "D\u017e", 0x01C6: "d\u017e",
    0x01C7: "LJ", 0x01C8: "Lj", 0x01C9: "lj", 0x01CA: "NJ", 0x01CB: "Nj", 0x01CC: "nj",
    0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl",
    0xFB05: "\u017ft", 0xFB06: "st",
}


def _width_table():
    t = {0x3000: " "}
    for cp in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(cp))
        if alt != chr(cp):
            t[cp] = alt
    return t


_WIDTH = _width_table()
_CONTROL = set(range(0x00, 0x09)) | {0x0B} | set(range(0x0E, 0x20)) | {0x7F} | \
    set(range(0x206A, 0x2070)) | {0xFEFF} | set(range(0xFFF9, 0xFFFD))


def _fix_pass(text, unescape):
    """One pass of the reproduced ftfy fixes, in ftfy's order."""
    if unescape:
        text = _ftfy_unescape(text)
    text = "".join(_cp1252_c1(c) if 0x80 <= ord(c) <= 0x9F else c for c in text)
    text = text.translate(_LIGATURES)
    text = text.translate(_WIDTH)
    out = []
    for c in text:
        if c == "\u02bc" or "\u2018" <= c <= "\u201b":
            out.append("'")
        elif "\u201c" <= c <= "\u201f":
            out.append('"')
        else:
            out.append(c)
    text = "".join(out)
    text = (text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
            .replace("\u2029", "\n").replace("\u0085", "\n"))
    text = _ANSI_RE.sub("", text)
    text = "".join(c for c in text if ord(c) not in _CONTROL)
    return unicodedata.normalize("NFC", text)


def fix_text_subset(text):
    """The part of ftfy.fix_text that the C tokenizer reproduces (see SUBSET_NOTES)."""
    out = []
    unescape = True
    pos = 0
    while pos < len(text):
        nl = text.find("\n", pos)
        end = len(text) if nl < 0 else nl + 1
        seg = text[pos:end]
        if "<" in seg:          # ftfy: a line that may be HTML turns unescaping off
            unescape = False    # for it and every later line
        while True:
            fixed = _fix_pass(seg, unescape)
            if fixed == seg:
                break
            seg = fixed
        out.append(seg)
        pos = end
    return "".join(out)


def clean_text(text, cleaner="auto"):
    """Upstream's clean: fix_text, html.unescape twice, strip, collapse whitespace,
    lower-case."""
    if cleaner == "auto":
        cleaner = "ftfy" if _ftfy_or_none() is not None else "subset"
    if cleaner == "ftfy":
        text = _ftfy_or_none().fix_text(text)
    elif cleaner == "subset":
        text = fix_text_subset(text)
    else:
        raise ValueError("cleaner must be 'auto', 'ftfy' or 'subset'")
    text = html.unescape(html.unescape(text)).strip()
    text = " ".join(text.split())
    return text.lower()


# ---------------------------------------------------------------------------------------
# The tokenizer

class ClipTokenizer:
    """CLIP's BPE tokenizer over a merge list [(a, b), ...] (rank = position).

    Vocabulary: 256 byte symbols (BYTE_ORDER), the same with "</w>", one entry per merge
    (a + b), then sot and eot: vocab_size = 512 + len(merges) + 2."""

    def __init__(self, merges, cleaner="auto", specials="clip"):
        self.merges = [tuple(m) for m in merges]
        for m in self.merges:
            if len(m) != 2:
                raise ValueError("a merge is a pair of strings, got %r" % (m,))
        self.cleaner = cleaner
        sot_text, eot_text = SPECIAL_SPELLINGS[specials]
        vocab = [BYTE_SYM[b] for b in BYTE_ORDER]
        vocab += [s + END_OF_WORD for s in vocab]
        vocab += [a + b for a, b in self.merges]
        vocab += [sot_text, eot_text]
        self.vocab = vocab
        # Later entries win when a string repeats, as in upstream's dict(zip(...)).
        self.encoder = {s: i for i, s in enumerate(vocab)}
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        self.vocab_size = len(vocab)
        self.sot = self.vocab_size - 2
        self.eot = self.vocab_size - 1
        self.special_texts = (sot_text, eot_text)
        self.pattern = regex.compile(
            regex.escape(sot_text) + "|" + regex.escape(eot_text) +
            r"|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            regex.IGNORECASE)

    @classmethod
    def from_file(cls, path, **kwargs):
        return cls(read_merges(path), **kwargs)

    def clean(self, text):
        return clean_text(text, self.cleaner)

    def split(self, cleaned):
        return self.pattern.findall(cleaned)

    def bpe(self, piece):
        """The symbols (vocabulary strings) one regex piece becomes."""
        if piece in self.special_texts:
            return [piece]      # upstream's cache holds the special tokens unsplit
        syms = [BYTE_SYM[b] for b in piece.encode("utf-8")]
        syms[-1] += END_OF_WORD
        while len(syms) > 1:
            best = None
            for pair in zip(syms, syms[1:]):
                r = self.ranks.get(pair)
                if r is not None and (best is None or r < best[0]):
                    best = (r, pair)
            if best is None:
                break
            first, second = best[1]
            merged, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == first and syms[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(syms[i])
                    i += 1
            syms = merged
        return syms

    def encode(self, text):
        ids = []
        for piece in self.split(self.clean(text)):
            ids.extend(self.encoder[s] for s in self.bpe(piece))
        return ids

    def tokenize_one(self, text, context_length=77):
        ids = [self.sot] + self.encode(text) + [self.eot]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = self.eot
        return ids + [0] * (context_length - len(ids))

    def tokenize(self, texts, context_length=77):
        import torch
        if isinstance(texts, str):
            texts = [texts]
        return torch.tensor([self.tokenize_one(t, context_length) for t in texts],
                            dtype=torch.long).reshape(len(texts), context_length)

    def decode(self, ids):
        inv = {s: b for b, s in enumerate(BYTE_SYM)}
        text = "".join(self.vocab[i] for i in ids)
        for sp in self.special_texts:
            text = text.replace(sp, "")
        out = bytearray()
        i = 0
        while i < len(text):
            if text.startswith(END_OF_WORD, i):
                out += b" "
                i += len(END_OF_WORD)
            else:
                out.append(inv[text[i]])
                i += 1
        return out.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------
# Merge files

def read_merges(path):
    """Reads the official gzip file (header line, then CLIP's first 48894 merges) or
    Tessera's clip_bpe.txt (one "a b" per line, every line used)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        lines = gzip.decompress(raw).decode("utf-8").split("\n")
        first = 2                                   # file line of the first merge
        lines = lines[1:N_CLIP_MERGES + 1]
    else:
        lines = raw.decode("utf-8").split("\n")
        first = 1
    if lines and lines[-1] == "":                   # a final newline
        lines.pop()
    merges = []
    for n, line in enumerate(lines, first):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError("%s: line %d: expected two symbols, got %r" % (path, n, line))
        merges.append((parts[0], parts[1]))
    return merges


def write_merges(path, merges):
    """Writes Tessera's clip_bpe.txt: one merge "a b\\n" per line, rank order, no header."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for a, b in merges:
            f.write("%s %s\n" % (a, b))


# ---------------------------------------------------------------------------------------
# A small, realistic merge list for tests

_CORPUS = """
a photo of a cat sitting on a red chair. a painting of a dog in the style of van gogh!
an astronaut riding a horse on the moon, digital art, 4k, trending on artstation
a close-up photo of a beautiful woman's face, 85mm lens, f/1.8, bokeh, golden hour
the quick brown fox jumps over the lazy dog; it's a sunny day and they're happy.
a bowl of fruit: apples, oranges, bananas and grapes on a wooden table (still life)
city skyline at night with neon lights, cyberpunk, rain, reflections, 8k uhd
portrait of an old man with a white beard, oil on canvas, rembrandt lighting
a cute corgi puppy playing in the snow, high quality photograph, award winning
mountains and a lake at sunrise, landscape photography, national geographic
a futuristic car driving through the desert, concept art, unreal engine 5
i'm sure we'll see you'd like this; we've been there. don't stop - won't stop
two people walking on the beach at sunset, waves, seagulls, summer vacation
a medieval castle on a hill surrounded by a forest, fantasy, matte painting
watercolor illustration of flowers: roses, tulips, daisies & sunflowers
a bird's eye view of a small village with houses and streets, isometric, 3d render
a black and white photo of a train station in 1920, vintage, film grain
minimalist logo of a mountain, vector, flat design, simple shapes, blue and green
a plate of sushi and ramen, food photography, top view, studio lighting
an elephant, a giraffe and a zebra in the savanna, wildlife photo, 300mm
a robot reading a book in a library, warm light, cozy, highly detailed
abstract geometric pattern with triangles and circles, colorful, 1970s poster
the eiffel tower in paris, spring, cherry blossoms, people, cafe, street
a glass of water on a table next to a window, morning light, photorealistic
a knight in shining armor holding a sword, epic, dramatic clouds, cinematic
children playing football in a park, 2010, candid shot, wide angle
a spaceship flying over a planet with rings, stars, galaxy, science fiction
"hello world" written on a blackboard with chalk, classroom, school
a cup of coffee and a croissant, breakfast, 100% natural, price: $5.99
number 1, number 2, number 3 ... 10, 20, 50, 100, 1000, 2024, 3.14159
an owl at midnight under the full moon -- spooky, halloween, pumpkins
a snowy street in new york city, christmas lights, winter evening
underwater scene with coral reef, tropical fish, turtle, sun rays
a samurai standing in a bamboo forest, ukiyo-e, japanese woodblock print
sketch of a building, architecture drawing, pencil on paper, perspective
a mouse and a keyboard on a desk, computer, office, modern interior
a big red apple, a small green pear, the yellow lemon and an orange
he's running, she's jumping, they've arrived, we're leaving, you'll see
"""


def corpus_pieces(cleaner="subset"):
    """The built-in corpus, cleaned and split exactly as prompts are."""
    tok = ClipTokenizer([], cleaner=cleaner)
    words = []
    for line in _CORPUS.strip().split("\n"):
        words.extend(tok.split(tok.clean(line)))
    return words


def make_test_merges(n_merges):
    """Learns n_merges BPE merges from the built-in corpus (deterministic): classic BPE
    over byte symbols with "</w>" on each word's last symbol; at each step the most
    frequent adjacent pair wins, ties broken by the pair's strings. Pairs whose
    concatenation is already a symbol are skipped so that every vocabulary string is
    distinct. Raises if the corpus runs out of pairs before n_merges."""
    counts = {}
    for w in corpus_pieces():
        syms = [BYTE_SYM[b] for b in w.encode("utf-8")]
        syms[-1] += END_OF_WORD
        key = tuple(syms)
        counts[key] = counts.get(key, 0) + 1
    words = list(counts.items())
    known = set(BYTE_SYM) | {s + END_OF_WORD for s in BYTE_SYM}
    merges = []
    while len(merges) < n_merges:
        pairs = {}
        for syms, c in words:
            for p in zip(syms, syms[1:]):
                if p[0] + p[1] not in known:
                    pairs[p] = pairs.get(p, 0) + c
        if not pairs:
            raise ValueError("the test corpus only supports %d merges" % len(merges))
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        known.add(best[0] + best[1])
        new_words = []
        for syms, c in words:
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            new_words.append((tuple(out), c))
        words = new_words
    return merges


if __name__ == "__main__":
    import sys
    if len(sys.argv) < 3:
        print("usage: clip_tokenizer_ref.py MERGES_FILE TEXT...", file=sys.stderr)
        sys.exit(2)
    t = ClipTokenizer.from_file(sys.argv[1])
    for text in sys.argv[2:]:
        print(t.tokenize_one(text))
