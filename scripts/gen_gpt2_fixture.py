#!/usr/bin/env python3
"""Makes the tiny GPT-2 fixture of Loom's import test, with Hugging Face transformers.

A byte-level BPE tokenizer (Hugging Face `tokenizers`, with GPT-2's <|endoftext|>) trained on the first 60 kB of the
bundled Shakespeare to 400 tokens, saved as GPT-2's vocab.json and merges.txt; a
GPT2LMHeadModel with random weights (2 layers, n_embd 32, 4 heads, 64 positions,
gelu_new) saved with save_pretrained (model.safetensors, config.json); and reference.json:
a text, its token ids from GPT2TokenizerFast, the model's logits for them, and 12 tokens
of greedy generation from model.generate.

    pip install torch transformers tokenizers
    python3 scripts/gen_gpt2_fixture.py Tests/LoomTrainTests/Fixtures/gpt2-tiny
"""
import json
import os
import sys

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    text = open(os.path.join(os.path.dirname(__file__), "..", "data", "shakespeare.txt"), encoding="utf-8").read()[:60000]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text], vocab_size=400, min_frequency=2, show_progress=False, special_tokens=["<|endoftext|>"])
    bpe.save_model(out)  # vocab.json, merges.txt
    tokenizer = GPT2TokenizerFast(os.path.join(out, "vocab.json"), os.path.join(out, "merges.txt"))

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4, activation_function="gelu_new",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # biases and norms away from their defaults, so that a mix-up shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)

    prompt = "ROMEO:\nBut, soft! what light through yonder window breaks? Ünïcödé 😀"
    ids = tokenizer.encode(prompt)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
        generated = model.generate(torch.tensor([ids[:8]]), max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 8:]
    json.dump({"text": prompt, "ids": ids, "logits": [[round(x, 6) for x in row] for row in logits.tolist()],
               "greedy_prompt": ids[:8], "greedy": generated.tolist(), "transformers": __import__("transformers").__version__},
              open(os.path.join(out, "reference.json"), "w"))


if __name__ == "__main__":
    main()
