#!/usr/bin/env python3
"""Export a GGUF checkpoint to a float32 Hugging Face checkpoint.

Usage: export_hf.py GGUF_FILE OUTDIR

Writes OUTDIR/{config.json, model.safetensors, generation_config.json,
tokenizer.json, tokenizer_config.json, export.json}. The GGUF is dequantized
by transformers' own GGUF loader (needs the `gguf` package). A model loaded
from GGUF refuses save_pretrained, so its weights are copied into a fresh model
built from the same config (minus the quantization_config) and that is saved.

The export is written into a temporary directory next to OUTDIR, re-loaded
from there and checked, then renamed into place. It is skipped when OUTDIR
already holds config.json, model.safetensors and tokenizer.json and
OUTDIR/export.json records the GGUF's sha256.

The check is specific to SmolLM2 (the default model of ttft): the tokenizer
must encode PROMPT to EXPECTED_IDS and the greedy next token must decode to
EXPECTED_NEXT. For other GGUFs pass --no-check.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

PROMPT = "The capital of France is"
EXPECTED_IDS = [504, 3575, 282, 4649, 314]
EXPECTED_NEXT = " Paris"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fail(msg):
    print(f"export_hf: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def up_to_date(outdir, gguf_sha):
    if not all((outdir / f).is_file() for f in REQUIRED):
        return False
    try:
        meta = json.loads((outdir / "export.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("gguf_sha256") == gguf_sha


def verify(export_dir, check):
    """Load the export from disk (not from memory) and check it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export_dir)
    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
    model.eval()
    ids = tok(PROMPT, add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
    next_id = int(torch.argmax(logits))
    next_text = tok.decode([next_id])
    print(f"export_hf: {PROMPT!r} -> ids {ids}; greedy next {next_id} {next_text!r}")
    if not check:
        return
    if ids != EXPECTED_IDS:
        fail(f"tokenizer encodes {PROMPT!r} to {ids}, expected {EXPECTED_IDS}")
    if next_text != EXPECTED_NEXT:
        fail(f"greedy next token after {PROMPT!r} is {next_id} {next_text!r}, expected {EXPECTED_NEXT!r}")
    if not model.config.tie_word_embeddings or model.get_output_embeddings().weight.data_ptr() != (
        model.get_input_embeddings().weight.data_ptr()
    ):
        # SmolLM2 ties lm_head to the embeddings; an untied export would mean
        # the config or the weight copy went wrong.
        fail("expected tied lm_head/embed_tokens in the exported model")


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("gguf_file")
    ap.add_argument("outdir")
    ap.add_argument("--no-check", action="store_true", help="skip the SmolLM2-specific output check")
    args = ap.parse_args()

    gguf = Path(args.gguf_file).resolve()
    outdir = Path(args.outdir).resolve()
    if not gguf.is_file():
        fail(f"no such GGUF file: {gguf}")

    t0 = time.monotonic()
    gguf_sha = sha256_file(gguf)
    if up_to_date(outdir, gguf_sha):
        print(f"export_hf: {outdir} is up to date (gguf sha256 {gguf_sha[:12]})")
        return 0

    os.environ.setdefault("TQDM_DISABLE", "1")  # GGUF dequantization progress bar
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    print(f"export_hf: loading {gguf.name} (dequantizing to float32)", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    qmodel = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)

    config = qmodel.config
    try:
        del config.quantization_config
    except AttributeError:
        pass
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(qmodel.state_dict(), strict=False)
    # A tied lm_head may be absent from one side; anything else is an error.
    missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in unexpected if k != "lm_head.weight"]
    if missing or unexpected:
        fail(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    if getattr(qmodel, "generation_config", None) is not None:
        model.generation_config = qmodel.generation_config
    model.eval()
    del qmodel

    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = outdir.parent / f".{outdir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        del model
        for f in REQUIRED + ("tokenizer_config.json", "generation_config.json"):
            if not (tmp / f).is_file():
                fail(f"export did not produce {f}")
        verify(tmp, check=not args.no_check)
        meta = {
            "gguf": gguf.name,
            "gguf_sha256": gguf_sha,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
        }
        (tmp / "export.json").write_text(json.dumps(meta, indent=2) + "\n")

        old = None
        if outdir.exists():
            old = outdir.parent / f".{outdir.name}.old-{os.getpid()}"
            os.rename(outdir, old)
        os.rename(tmp, outdir)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    print(f"export_hf: wrote {outdir} in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
