"""Reads a safetensors file written by sparsetrain with the reference `safetensors` library,
checks its metadata, and writes every tensor back out with that library.

usage: safetensors_roundtrip.py IN OUT
"""
import sys

from safetensors import safe_open
from safetensors.torch import load_file, save_file

src, dst = sys.argv[1], sys.argv[2]
with safe_open(src, framework="pt") as f:
    meta = f.metadata()
if meta.get("format") != "pt" or meta.get("origin") != "sparsetrain":
    sys.exit(f"unexpected metadata {meta}")
tensors = load_file(src)
save_file(tensors, dst, metadata={"format": "pt", "origin": "python"})
