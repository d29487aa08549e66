"""benchmarks/plan_memory_table.py plans the hub recipes offline from the models' published config
values: those values must give the models' published parameter counts, or the README's memory
column would describe a different model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# From each model card / safetensors index (total parameters, tied embeddings counted once).
PUBLISHED = {
    "gpt2": 124_439_808,
    "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400,
    "mistralai/Mistral-7B-Instruct-v0.3": 7_248_023_552,
}


def _table_module():
    spec = importlib.util.spec_from_file_location(
        "plan_memory_table", REPO / "benchmarks" / "plan_memory_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("hub_id", sorted(PUBLISHED))
def test_published_config_values_give_the_published_parameter_count(tmp_path, hub_id):
    from transformers import AutoConfig

    from warmline.recipe import load_recipe
    from warmline.training.plan import count_parameters

    kind, values = _table_module().HUB_CONFIGS[hub_id]
    AutoConfig.for_model(kind, **values).save_pretrained(tmp_path / kind)
    recipe = next(p for p in sorted((REPO / "recipes").glob("*.yaml")) if load_recipe(p).base_model == hub_id)
    counted = count_parameters(load_recipe(recipe, [f"base_model={tmp_path / kind}"]))
    assert counted["total"] == PUBLISHED[hub_id]


def test_every_hub_recipe_has_a_config():
    from warmline.recipe import load_recipe

    configs = _table_module().HUB_CONFIGS
    for path in (REPO / "recipes").glob("*.yaml"):
        model = load_recipe(path).base_model
        assert model.startswith("packaged:") or model in configs, f"{path.name}: add {model} to HUB_CONFIGS"
