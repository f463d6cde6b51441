#!/usr/bin/env python3
"""Writes the GPT-2 pre-tokenizer's cuts of a set of texts, for Loom's ByteLevelChunks test.

GPT-2's pattern with the `regex` module (pip install regex), as openai/gpt-2's encoder.py
and Hugging Face's GPT2Tokenizer apply it:

    python3 scripts/gen_gpt2_chunks.py Tests/LoomDataTests/Fixtures/gpt2_chunks.json
"""
import json
import sys

import regex

PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

TEXTS = [
    "Hello world",
    "  two spaces, then\n\nnew lines\t\ttabs   and trailing   ",
    "I'm sure you're right; they've said we'll go, she'd see it's Bob's. I'M LOUD 'S",
    "don't 've ' s '' x''s",
    "numbers 123 4.56 -7e8 ٣٤ ½ Ⅻ",
    "Ünïcödé naïve café — “quotes” «guillemets» …",
    "日本語のテキスト、句読点。中文文本！",
    "emoji 👩‍👩‍👧 🇫🇷 ok",
    "nbsp\u00a0here and\u3000ideographic space, \r\nCRLF",
    "\n",
    "   ",
    "a\n b\n\n c",
    "x!!! ???...,,, ;-)",
    "combining e\u0301 and a\u0308 marks",
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n",
]


def main():
    cases = [{"text": t, "chunks": PATTERN.findall(t)} for t in TEXTS]
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
