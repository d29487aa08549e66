"""The README's memory table: `warmline train RECIPE --plan`'s peak-memory estimate for every
shipped recipe, offline.

Recipes on the packaged model are planned in full (`plan_recipe`: examples, steps, memory). The
hub recipes need the hub for their model config and datasets (and QLoRA needs CUDA to pass the
recipe checks), so for them the plan's own `count_parameters` and `estimate_memory` run on a
config-only folder holding the model's published config.json values (below, with their source):
the memory column is the plan's, the step column says the data is on the hub.

    .venv/bin/python benchmarks/plan_memory_table.py            # markdown table on stdout
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Published config.json values (huggingface.co/<id>/blob/main/config.json): only the shapes the
# plan reads. A GPU run uses bf16 for these recipes (`precision: auto` on a bf16 GPU).
HUB_CONFIGS = {
    "gpt2": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)),
    "meta-llama/Llama-3.2-1B-Instruct": (
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            vocab_size=128256,
            tie_word_embeddings=True,
        ),
    ),
    "mistralai/Mistral-7B-Instruct-v0.3": (
        "mistral",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=32768,
            tie_word_embeddings=False,
        ),
    ),
}


def _method(recipe) -> str:
    t = recipe.training
    if t.lora.enabled:
        return f"{'QLoRA (NF4)' if t.lora.quantize else 'LoRA'} r={t.lora.r}"
    return f"full, top {t.trainable_layers} blocks" if t.trainable_layers is not None else "full"


def rows() -> list[dict]:
    """One row per shipped recipe: model, method, trained share, precision, peak per stage."""
    from transformers import AutoConfig

    from warmline.recipe import load_recipe
    from warmline.training.plan import GIB, count_parameters, estimate_memory, plan_recipe

    out = []
    with tempfile.TemporaryDirectory() as scratch:
        for path in sorted((REPO / "recipes").glob("*.yaml")):
            recipe = load_recipe(path)
            row = {"recipe": f"recipes/{path.name}", "model": recipe.base_model, "method": _method(recipe)}
            if recipe.base_model in HUB_CONFIGS:
                kind, values = HUB_CONFIGS[recipe.base_model]
                folder = Path(scratch) / kind
                AutoConfig.for_model(kind, **values).save_pretrained(folder)
                recipe = load_recipe(path, [f"base_model={folder}"])
                params = count_parameters(recipe)
                peaks = [
                    sum(estimate_memory(params, recipe, s.max_length, "bf16", "cuda").values()) / GIB
                    for s in recipe.stages
                ]
                row |= {"precision": "bf16", "device": "1 GPU", "steps": "hub data: run --plan online"}
            else:
                result = plan_recipe(recipe, str(path))
                params = result["parameters"]
                peaks = [s.peak_bytes / GIB for s in result["stages"]]
                row |= {
                    "precision": result["precision"],
                    "device": f"1 {result['device'].upper()} process",
                    "steps": " / ".join(str(s.optimizer_steps) for s in result["stages"]),
                }
            row |= {
                "parameters": f"{params['total'] / 1e6:.0f}M, {params['trained'] / 1e6:.1f}M trained",
                "peak": " / ".join(f"{p:.2f}" for p in peaks) if len(set(peaks)) > 1 else f"{peaks[0]:.2f}",
            }
            out.append(row)
    return out


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    print(
        "| recipe | model | method | parameters | precision | peak memory per device (GiB, per stage) | devices | optimizer steps per stage |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows():
        print(
            f"| `{r['recipe']}` | {r['model']} | {r['method']} | {r['parameters']} | {r['precision']} | "
            f"{r['peak']} | {r['device']} | {r['steps']} |"
        )


if __name__ == "__main__":
    main()
