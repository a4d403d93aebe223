"""Reference side of the Hugging Face interop tests, with `transformers` (CPU, fp32).

usage:
  hf_llama_oracle.py make DIR untied|tied
      saves a tiny random LlamaForCausalLM to DIR (untied: llama3 RoPE scaling, GQA, sharded
      safetensors with an index; tied: linear RoPE scaling, one file), a stand-in
      tokenizer.json, and DIR/reference.safetensors {tokens, logits}.
  hf_llama_oracle.py logits DIR IN OUT
      loads DIR with AutoModelForCausalLM and writes the logits for IN's "tokens" to OUT.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


def make(out, kind):
    torch.manual_seed(0 if kind == "untied" else 1)
    common = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.05)
    if kind == "untied":
        cfg = LlamaConfig(**common, intermediate_size=176, num_key_value_heads=2, tie_word_embeddings=False,
                          rope_theta=500000.0,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    else:
        cfg = LlamaConfig(**common, intermediate_size=128, num_key_value_heads=4, tie_word_embeddings=True,
                          rope_theta=10000.0, rope_scaling={"rope_type": "linear", "factor": 2.0})
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # norms away from 1 so that their mapping matters
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    model.save_pretrained(out, max_shard_size="100KB" if kind == "untied" else "50MB")
    with open(f"{out}/tokenizer.json", "w") as f:
        json.dump({"version": "1.0", "note": f"stand-in tokenizer for {kind}"}, f)
    tokens = torch.randint(0, 300, (2, 37), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(tokens).logits.float()
    save_file({"tokens": tokens, "logits": logits.contiguous()}, f"{out}/reference.safetensors")


def logits(model_dir, inp, out):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens = load_file(inp)["tokens"]
    with torch.no_grad():
        result = model(tokens).logits.float()
    save_file({"logits": result.contiguous()}, out)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        logits(sys.argv[2], sys.argv[3], sys.argv[4])
