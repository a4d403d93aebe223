"""Trains a small byte-level BPE with the `tokenizers` library and encodes a few MB of
varied text with it, for the C++ tokenizer to reproduce id for id.

usage: bpe_oracle.py OUT_DIR gpt2|llama3|qwen2|qwen2nfc
writes OUT_DIR/tokenizer.json (merges as [a, b] pairs), OUT_DIR/legacy/tokenizer.json (the
same tokenizer with merges as "a b" strings), OUT_DIR/text.txt (UTF-8), OUT_DIR/nfc.txt
(its NFC form) and OUT_DIR/ids.bin (the ids of text.txt, uint32 little-endian, no special
tokens added). qwen2nfc is qwen2 with the NFC normalizer and a normalized added token.
"""
import json
import os
import random
import sys
import sysconfig
from pathlib import Path

import unicodedata

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPECIALS = ["<|endoftext|>", "<|pad|>", "<tool>"]

WORDS = ("the of and to in is was he for it with as his on be at by I this had not are but from or have an they "
         "which one you were her all she there would their we him been has when who will more no if out so said "
         "what up its about into than them can only other new some could time these two may then do first any my "
         "now such like our over man me even most made after also did many before must through back years where "
         "much your way well down should because each just those people Mr how too little state good very make "
         "world still own see men work long get here between both life being under never day same another know "
         "while last might us great old year off come since against go came right used take three").split()
SCRIPTS = [
    "Съешь же ещё этих мягких французских булок, да выпей чаю. ",
    "中文分词是自然语言处理的基础任务之一，长上下文模型需要高效的注意力。",
    "日本語のテキストも含めます。カタカナとひらがな、漢字。",
    "한국어 문장도 포함합니다. ",
    "نص عربي قصير مع أرقام ١٢٣ وعلامات. ",
    "हिन्दी में कुछ पाठ और अंक १२३४। ",
    "Ελληνικά γράμματα: αβγδε ΑΒΓΔΕ. ",
    "Emoji 😀🚀👍🏽 and flags 🇵🇹 and ZWJ 👩‍💻. ",
    "Combining: e\u0301 a\u0308 n\u0303; precomposed: é ä ñ. ",
    "Math ∑∫√∞ ≤ ≥ ≠ ² ³ ½ Ⅻ ⅷ ⑳. ",
    "Spaces:\u00a0nbsp,\u2003em,\u3000ideographic,\u2028line-sep,\u0085nel. ",
    "ﬁligature ſtraße ǅ Dž ῼ ᾈ. ",
    # canonical (de)composition and reordering, for NFC
    "Ohm \u2126 angstrom \u212b e\u0301\u0301 a\u0323\u0307 a\u0307\u0323 e\u0323\u0302 \u0958 \u0344 "
    "\u1100\u1161\u11a8 \uac00\u11a8 \u1100\u1161 Hello world q\u0307\u0323 \u0f73 \u0cca. ",
]
# Every character with a canonical decomposition up to U+3000, precomposed and decomposed.
COMPOSED = "".join(chr(c) for c in range(0xC0, 0x3000) if unicodedata.decomposition(chr(c))[:1] not in ("", "<"))
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)
CONTRACTIONS = ["don't", "I'M", "we'LL", "it'S", "they're", "you'VE", "she'd", "'tis", "O'Neil", "rock'n'roll",
                "can'T", "x'", "'", "''", "ſ'ſ", "it\u017fs", "it'\u017f"]


def prose(rng, n_words):
    out = []
    for _ in range(n_words):
        r = rng.random()
        if r < 0.75:
            w = rng.choice(WORDS)
            out.append(w.capitalize() if rng.random() < 0.1 else w)
        elif r < 0.82:
            out.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
        elif r < 0.88:
            out.append(rng.choice(CONTRACTIONS))
        elif r < 0.93:
            out.append(rng.choice(SCRIPTS))
        elif r < 0.96:
            out.append(rng.choice([",", ".", ";", "!?", "...", "--", "(", ")", "\"", "#$%&", "@", "`"]))
        else:
            out.append(rng.choice(SPECIALS[:1] + ["<|endoftext", "<tool>", "<|pad|>"]))
        out.append(rng.choice([" "] * 20 + ["  ", "\t", "\n", "\n\n", " \n", "\r\n", "   \n  ", "\u00a0", ""]))
    return "".join(out)


def whitespace_runs(rng, n):
    parts = []
    for _ in range(n):
        parts.append(rng.choice(WORDS))
        parts.append("".join(rng.choice([" ", "\t", "\n", "\r", "\u3000", "\u00a0"]) for _ in range(rng.randint(1, 40))))
    return "".join(parts)


def code_text(limit):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for name in ["json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "heapq.py", "bisect.py",
                 "fractions.py", "statistics.py", "difflib.py", "argparse.py", "typing.py", "dataclasses.py"]:
        p = stdlib / name
        if p.exists():
            t = p.read_text(encoding="utf-8")
            chunks.append(t)
            size += len(t)
        if size > limit:
            break
    return "".join(chunks)[:limit]


def main():
    out, kind = Path(sys.argv[1]), sys.argv[2]
    rng = random.Random(1234)
    text = "".join([
        prose(rng, 250_000), code_text(900_000), whitespace_runs(rng, 20_000), "".join(SCRIPTS) * 400,
        COMPOSED, " ", DECOMPOSED, "   trailing spaces   ", "\n\n\n",
    ])
    tok = Tokenizer(models.BPE(ignore_merges=(kind == "llama3")))
    if kind == "qwen2nfc":
        tok.normalizer = normalizers.NFC()
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        regex = LLAMA3 if kind == "llama3" else QWEN2
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    train_text = text[: len(text) // 2]
    tok.train_from_iterator([train_text[i:i + 10000] for i in range(0, len(train_text), 10000)], trainer)
    if kind == "qwen2nfc":
        tok.add_tokens(["Hello world"])  # not special: matched after normalization
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))

    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    spec["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    (out / "legacy").mkdir(exist_ok=True)
    (out / "legacy" / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")

    ids = tok.encode(text, add_special_tokens=False).ids
    (out / "text.txt").write_bytes(text.encode("utf-8"))
    (out / "nfc.txt").write_bytes(unicodedata.normalize("NFC", text).encode("utf-8"))
    np.asarray(ids, dtype="<u4").tofile(out / "ids.bin")
    print(f"{kind}: {len(text.encode('utf-8'))} bytes -> {len(ids)} ids", file=sys.stderr)


if __name__ == "__main__":
    main()
