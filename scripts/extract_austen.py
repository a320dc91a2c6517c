"""Decode Jane Austen's six novels from Debian's r-cran-janeaustenr into one UTF-8 text file.

The package keeps them in an R lazy-load database: Rdata.rdx (gzip'd R serialisation of an index
name -> [offset, length]) and Rdata.rdb (records of a 4-byte big-endian length followed by zlib'd
R serialisation of a character vector, one element per line of the book). The PyPI `rdata` package
parses R serialisation, so no R installation is needed.

usage: extract_austen.py DATA_DIR OUT_TXT
"""
import gzip
import sys
import warnings
import zlib
from pathlib import Path

import rdata

NOVELS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]


def parse_r(blob: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that a bare serialisation "is assumed RDS"
        return rdata.conversion.convert(rdata.parser.parse_data(blob))


def read_novel(rdb: bytes, offset: int, length: int) -> list[str]:
    record = rdb[offset:offset + length]
    lines = parse_r(zlib.decompress(record[4:]))
    return [str(line) for line in lines]


def main(data_dir: str, out_path: str) -> None:
    data = Path(data_dir)
    index = parse_r(gzip.decompress((data / "Rdata.rdx").read_bytes()))["variables"]
    rdb = (data / "Rdata.rdb").read_bytes()
    missing = [n for n in NOVELS if n not in index]
    if missing:
        sys.exit(f"{data / 'Rdata.rdx'}: novels missing from the index: {missing}")
    novels = ["\n".join(read_novel(rdb, int(index[n][0]), int(index[n][1]))).strip() for n in NOVELS]
    text = "\n\n\n".join(novels) + "\n"
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"[setup] wrote {out}: {len(novels)} novels, {text.count(chr(10))} lines, {len(text.encode())} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
