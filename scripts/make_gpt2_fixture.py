"""Writes tests/fixtures/gpt2_ids.json: GPT-2 token ids of fixed strings, computed by the `tiktoken`
library reading the same gpt2.tiktoken ranks file that moelab's own tokenizer reads. The C++ test
asserts that moelab produces exactly these ids.

usage: make_gpt2_fixture.py RANKS_FILE CORPUS_TXT OUT_JSON
"""
import json
import sys

import tiktoken
from tiktoken.load import load_tiktoken_bpe

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

STRINGS = [
    "Hello, world!",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "I'm sure you're right; they've said it'll do, and he'd go. She's won't.",
    "IT'S DON'T I'M YOU'RE WE'VE THEY'LL HE'D",
    "'s 't 're 've 'm 'll 'd ''s '",
    "Numbers: 0 7 42 1234567 3.14159 1,000,000 2026-11-24",
    "Punctuation!!! ??? ... --- (brackets) [square] {curly} <angle> @#$%^&*_+=|\\/~`",
    "two  spaces   three    four",
    "trailing spaces   ",
    "   leading spaces",
    "line one\nline two\n\nnew paragraph\n\n\n  indented\n",
    "tabs\tand\t\tmixed \t whitespace\r\nwindows line",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002 \u4e2d\u6587\u5b57",
    "emoji \U0001F600\U0001F680 and \u2764\ufe0f hearts",
    "combining e\u0301 and a\u0308 marks",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea \u0440\u0443\u0441\u0441\u043a\u0438\u0439",
    "non-breaking\u00a0space and\u2003em space and\u3000ideographic",
    "digits \u0664\u0665 superscript\u00b2 fraction \u00bd roman \u2167",
    "mixedCASE camelCase snake_case kebab-case SCREAMING_CASE",
    "email@example.com https://example.org/path?q=1&r=2#frag",
    "",
    " ",
    "\n",
    "a",
    "  \n  \n",
    "x" * 300,
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
]


def main(ranks_path: str, corpus_path: str, out_path: str) -> None:
    encoding = tiktoken.Encoding(
        name="gpt2-from-file",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(ranks_path),
        special_tokens={"<|endoftext|>": 50256},
    )
    corpus = open(corpus_path, encoding="utf-8").read()
    strings = STRINGS + [corpus[100000:104000], corpus[-3000:]]
    cases = [{"text": s, "ids": encoding.encode_ordinary(s)} for s in strings]
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"generator": "tiktoken " + tiktoken.__version__, "cases": cases}, f, ensure_ascii=True, indent=1)
    print(f"wrote {len(cases)} cases to {out_path}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
