#!/usr/bin/env python3
"""embed.py IN OUT SYMBOL: writes a C file defining `const char SYMBOL[]` (IN's bytes plus a NUL)
and `const size_t SYMBOL_len`. Used by meson to compile docs/openapi.json into the manager."""
import sys

src, dst, sym = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, "rb").read()
lines = []
for i in range(0, len(data), 16):
    # Bytes above 127 are cast: a plain char may be signed, and -Woverflow would object.
    lines.append("  " + ", ".join(str(b) if b < 128 else f"(char)0x{b:02x}"
                                  for b in data[i:i + 16]) + ",")
with open(dst, "w") as f:
    f.write(f"/* Generated from {src.split('/')[-1]} by embed.py: do not edit. */\n")
    f.write("#include <stddef.h>\n\n")
    f.write(f"const char {sym}[] = {{\n" + "\n".join(lines) + "\n  0};\n")
    f.write(f"const size_t {sym}_len = {len(data)};\n")
