"""`warmline train RECIPE --plan`: what a run will do and need, before it does anything.

Per stage: examples and tokens after cleaning, optimizer steps (the Trainer's own arithmetic:
batches per process, then accumulation, then epochs), batch sizes, parameters, and an estimate of
peak memory per process. The model is built on the meta device, so no weights load.

The memory estimate is a sum of named parts (weights, gradients, optimizer state, activations,
logits, runtime); each part is a simple count, written out below, not a measurement. Activations
in particular depend on kernels (attention implementation, fused losses) and are a rough upper
estimate for the recipe's micro batch at the stage's max length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from warmline.recipe import Recipe

GIB = 1024**3
# Python, torch, transformers/TRL and the tokenizer resident before the model (CPU RSS), or the
# CUDA context and allocator slack on a GPU. Rough, constant figures.
RUNTIME_BYTES = {"cpu": int(0.9 * GIB), "cuda": int(1.0 * GIB)}
ADAM_BYTES_PER_PARAM = 8  # two fp32 moments per trained parameter (torch AdamW)
# Bytes per weight in 4-bit NF4 with double quantisation: 4 bits plus ~0.127 bits of scales.
NF4_BYTES_PER_PARAM = (4 + 0.127) / 8


@dataclass
class StagePlan:
    """What one stage will do and an estimate of what it needs, per process."""

    name: str
    examples: int
    replayed: int
    tokens: int
    assistant_tokens: int
    max_length: int
    epochs: float
    micro_batch_size: int
    global_batch_size: int
    accumulation_steps: int
    processes: int
    optimizer_steps: int
    memory: dict[str, int] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return sum(self.memory.values())


def optimizer_steps(
    examples: int, micro_batch_size: int, accumulation: int, processes: int, epochs: float
) -> int:
    """Optimizer steps the Trainer takes: micro-batches per process (accelerate evens the shards,
    so the last one is topped up), steps per epoch rounded up, then `ceil(epochs x steps)`."""
    batches = math.ceil(examples / micro_batch_size)
    per_process = math.ceil(batches / processes)
    per_epoch = max(math.ceil(per_process / accumulation), 1)
    return math.ceil(epochs * per_epoch)


def count_parameters(recipe: Recipe) -> dict[str, object]:
    """Parameter counts from the model built on the meta device: total, trained (after
    `trainable_layers` or LoRA), the share in linear layers (what 4-bit quantises), and shapes."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from warmline.models import resolve_model
    from warmline.training.checks import LORA_LAYER_TYPES
    from warmline.training.train import freeze_below, transformer_blocks

    config = AutoConfig.from_pretrained(resolve_model(recipe.base_model).path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # on the meta device the output head is not tied yet; loaded models are
    t = recipe.training
    unique = {id(p): p for p in model.parameters()}  # tied embeddings count once
    total = sum(p.numel() for p in unique.values())
    blocks = transformer_blocks(model)
    output = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in blocks.modules() if isinstance(m, torch.nn.Linear))
    if t.lora.enabled:
        trained = _lora_parameters(model, t.lora, output, LORA_LAYER_TYPES)
        layers_backpropagated = len(blocks)
    elif t.trainable_layers is not None:
        freeze_below(model, t.trainable_layers)
        trained = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
        layers_backpropagated = min(t.trainable_layers, len(blocks))
    else:
        trained, layers_backpropagated = total, len(blocks)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or text.n_embd
    return {
        "total": total,
        "trained": trained,
        "linear_in_blocks": linear,
        "layers": len(blocks),
        "layers_backpropagated": layers_backpropagated,
        "hidden": hidden,
        "intermediate": getattr(text, "intermediate_size", None)
        or getattr(text, "n_inner", None)
        or 4 * hidden,
        "heads": getattr(text, "num_attention_heads", None) or text.n_head,
        "vocab": text.vocab_size,
    }


def _lora_parameters(model, lora, output_layer, layer_types) -> int:
    """r x (in + out) per adapted layer, by PEFT's matching rule (all-linear skips the output head)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=lora.target_modules) if lora.target_modules != "all-linear" else None
    total = 0
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind not in layer_types or kind == "Embedding" or module is output_layer:
            continue
        if config is not None and not check_target_module_exists(config, name):
            continue
        rows, cols = module.weight.shape  # Linear: (out, in); GPT-2's Conv1D: (in, out): the sum is the same
        total += lora.r * (rows + cols)
    return total


def estimate_memory(
    params: dict, recipe: Recipe, max_length: int, precision: str, device: str
) -> dict[str, int]:
    """Peak bytes per process, by part. Weights are fp32 (autocast computes in bf16/fp16), or 4-bit
    linear layers plus bf16 for the rest with QLoRA; gradients fp32 for trained parameters;
    AdamW's two fp32 moments; activations stored for backward in the blocks that backpropagate."""
    t = recipe.training
    total, trained = params["total"], params["trained"]
    if t.lora.quantize:
        weights = params["linear_in_blocks"] * NF4_BYTES_PER_PARAM + (total - params["linear_in_blocks"]) * 2
    else:
        weights = total * 4
    act_bytes = 2 if precision in {"bf16", "fp16"} else 4
    tokens = t.micro_batch_size * max_length  # the worst micro batch: every example at max length
    h, i, layers = params["hidden"], params["intermediate"], params["layers_backpropagated"]
    # Tensors a decoder block saves for backward, per token: ~10 of width hidden (norm inputs and
    # outputs, q/k/v, attention output, residuals) and ~5 of the MLP width (gate, up, activation,
    # product, down input). Masked attention over a packed row (micro batch > 1 with packing) also
    # keeps the attention weights: heads x row length per token.
    per_token_layer = 10 * h + 5 * i
    if t.packing and t.micro_batch_size > 1:
        per_token_layer += params["heads"] * tokens
    if t.gradient_checkpointing:  # each block's input, plus one block recomputed at a time
        activations = tokens * (layers * h + per_token_layer) * act_bytes
    else:
        activations = tokens * layers * per_token_layer * act_bytes
    # logits in the compute dtype, their fp32 upcast for the loss, and its gradient
    logits = tokens * params["vocab"] * (act_bytes + 4 + 4)
    return {
        "weights": int(weights),
        "gradients": int(trained * 4),
        "optimizer": int(trained * ADAM_BYTES_PER_PARAM),
        "activations": int(activations),
        "logits": int(logits),
        "runtime": RUNTIME_BYTES["cuda" if device == "cuda" else "cpu"],
    }


def plan_recipe(recipe: Recipe, source: str = "recipe", num_processes: int | None = None) -> dict:
    """Everything `--plan` prints, as data: per-stage plans, parameters, device and its memory."""
    from warmline.hardware import device_memory, resolve_precision
    from warmline.training.checks import check_against_model
    from warmline.training.train import (
        _process_state,
        accumulation_steps,
        load_training_tokenizer,
        prepare_stages,
        replay_examples,
    )

    t = recipe.training
    processes = num_processes or _process_state().num_processes
    accumulation = accumulation_steps(t.global_batch_size, t.micro_batch_size, processes, source)
    check_against_model(recipe, source)
    precision = resolve_precision(t.precision)
    device, memory_bytes = device_memory()
    params = count_parameters(recipe)
    tokenizer = load_training_tokenizer(recipe)
    stages = prepare_stages(recipe, tokenizer, source)
    plans = []
    for stage in stages:
        examples = stage.train + replay_examples(stages, stage, t.seed)
        tokens = sum(len(e.input_ids) for e in examples)
        trained = sum(sum(lbl != -100 for lbl in e.labels) for e in examples)
        memory = estimate_memory(params, recipe, stage.config.max_length, precision, device)
        if stage.config.method == "dpo":  # one example is a pair: prompt + chosen, prompt + rejected
            tokens = sum(
                2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in stage.train_pairs
            )
            trained = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in stage.train_pairs)
            # Two rows per micro-batch, and (full training) a frozen fp32 reference copy.
            memory = estimate_memory(params, recipe, 2 * stage.config.max_length, precision, device)
            memory["reference"] = 0 if t.lora.enabled else params["total"] * 4
        plans.append(
            StagePlan(
                name=stage.config.name,
                examples=len(examples),
                replayed=len(examples) - len(stage.train),
                tokens=tokens,
                assistant_tokens=trained,
                max_length=stage.config.max_length,
                epochs=stage.config.epochs,
                micro_batch_size=t.micro_batch_size,
                global_batch_size=t.global_batch_size,
                accumulation_steps=accumulation,
                processes=processes,
                optimizer_steps=optimizer_steps(
                    len(examples), t.micro_batch_size, accumulation, processes, stage.config.epochs
                ),
                memory=memory,
            )
        )
    return {
        "stages": plans,
        "parameters": params,
        "precision": precision,
        "device": device,
        "device_memory_bytes": memory_bytes,
        "processes": processes,
    }


def advice(plan: StagePlan, recipe: Recipe) -> str:
    """The setting to change first: the one behind the largest part of the estimate."""
    part = max(("weights", "gradients", "optimizer", "activations", "logits"), key=lambda k: plan.memory[k])
    t = recipe.training
    if part in {"activations", "logits"}:
        if t.micro_batch_size > 1:
            return f"lower training.micro_batch_size (now {t.micro_batch_size}; accumulation keeps the global batch)"
        if not t.gradient_checkpointing and part == "activations":
            return "set training.gradient_checkpointing: true"
        return f"lower stages.N.max_length (now {plan.max_length})"
    if part in {"gradients", "optimizer"}:
        return "train fewer parameters: training.lora.enabled: true (or training.trainable_layers: N)"
    if not t.lora.quantize:
        return (
            "load the base in 4-bit: training.lora: {enabled: true, quantize: 4bit} (CUDA), or shard it "
            "with recipes/accelerate/fsdp-full-shard.yaml"
        )
    return "use a GPU with more memory, or shard with recipes/accelerate/deepspeed-zero3.yaml"


def _trained_what(recipe: Recipe) -> str:
    t = recipe.training
    if t.lora.enabled:
        return f"LoRA r={t.lora.r} on {t.lora.target_modules}"
    return f"top {t.trainable_layers} blocks" if t.trainable_layers is not None else "all weights"


def format_plan(result: dict, recipe: Recipe) -> str:
    """The plan as the terminal table `--plan` prints."""
    p, memory = result["parameters"], result["device_memory_bytes"]
    lines = [
        f"plan for '{recipe.name}': {result['processes']} process(es), precision {result['precision']}, "
        f"device {result['device']} with {memory / GIB:.1f} GiB",
        f"parameters: {p['total'] / 1e6:.1f}M, trained {p['trained'] / 1e6:.2f}M "
        f"({_trained_what(recipe)}"
        f"{', base in 4-bit' if recipe.training.lora.quantize else ''})",
    ]
    for s in result["stages"]:
        m = s.memory
        # Processes on one CPU machine share its memory; GPUs each have their own.
        need = s.peak_bytes * (s.processes if result["device"] == "cpu" else 1)
        fits = "fits" if need <= memory else f"DOES NOT FIT: {advice(s, recipe)}"
        lines += [
            f"stage '{s.name}': {s.examples} examples ({s.replayed} replayed), {s.tokens} tokens "
            f"({s.assistant_tokens} trained), max_length {s.max_length}, {s.epochs:g} epoch(s)",
            f"  optimizer steps {s.optimizer_steps}: global batch {s.global_batch_size} = micro {s.micro_batch_size} "
            f"x accumulation {s.accumulation_steps} x {s.processes} process(es)",
            f"  peak memory per process ~{s.peak_bytes / GIB:.2f} GiB (weights {m['weights'] / GIB:.2f}, gradients "
            f"{m['gradients'] / GIB:.2f}, optimizer {m['optimizer'] / GIB:.2f}, activations {m['activations'] / GIB:.2f}, "
            f"logits {m['logits'] / GIB:.2f}, runtime {m['runtime'] / GIB:.2f}"
            + (f", dpo reference {m['reference'] / GIB:.2f}" if "reference" in m else "")
            + f"): {fits}",
        ]
    return "\n".join(lines)


MEASURE_STEPS = 2


def measure_first_steps(recipe: Recipe, source: str = "recipe", steps: int = MEASURE_STEPS) -> dict:
    """`--plan --measure`: train the first stage's first `steps` optimizer steps for real, in a
    scratch folder that is deleted afterwards (the recipe's run folder is never touched), and
    return the measured peak memory and speed: peak RSS of this process (CPU), or the CUDA
    allocator's peak (GPU), seconds per optimizer step and trained-input tokens per second."""
    import dataclasses
    import resource
    import tempfile
    import time

    import torch
    from transformers import TrainerCallback

    from warmline.hardware import cap_onednn_cache, resolve_precision
    from warmline.training.train import build_stage_trainer, load_training_tokenizer, prepare_stages

    class StepTimer(TrainerCallback):
        """Wall time and input tokens of each optimizer step (forward, backward, optimizer)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.tokens: list[int] = []
            self._start, self._seen = 0.0, 0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start, self._seen = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)
            self.tokens.append(state.num_input_tokens_seen - self._seen)

    precision = resolve_precision(recipe.training.precision)
    cuda = torch.cuda.is_available()
    if not cuda:
        cap_onednn_cache()  # as train_recipe does, so the measurement is of the same process
    tokenizer = load_training_tokenizer(recipe)
    stages = prepare_stages(recipe, tokenizer, source)
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="warmline-measure-") as scratch:
        scratch_recipe = dataclasses.replace(recipe, output_dir=scratch)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        built = build_stage_trainer(
            scratch_recipe,
            stages[0],
            stages,
            recipe.base_model,
            tokenizer,
            precision,
            scratch_recipe.run_dir,
            callbacks=(timer,),
        )
        # Only the first `steps` steps, and no checkpoint: the measurement keeps nothing.
        built.trainer.args.max_steps = steps
        built.trainer.args.save_strategy = "no"
        built.trainer.train()
        trained_steps = built.trainer.state.global_step
    # The first step also pays for warm-up (allocator, kernels, lazy imports): time the rest.
    timed = slice(1, None) if len(timer.seconds) > 1 else slice(None)
    seconds, tokens = sum(timer.seconds[timed]), sum(timer.tokens[timed])
    return {
        "stage": stages[0].config.name,
        "steps": trained_steps,
        "device": "cuda" if cuda else "cpu",
        # ru_maxrss is KiB on Linux: the whole process's peak, as the plan's CPU estimate counts it
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "seconds_per_step": seconds / max(len(timer.seconds[timed]), 1),
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
    }


def _seconds(value: float) -> str:
    """Seconds with two decimals, or four under a tenth (a tiny model's step on a fast CPU read 0.00)."""
    return f"{value:.2f}" if value >= 0.1 else f"{value:.4f}"


def format_measurement(measured: dict, result: dict) -> str:
    """The measured lines `--plan --measure` adds: peak memory next to the first stage's estimate,
    and each stage's time estimated from the measured tokens per second."""
    first = result["stages"][0]
    if measured["device"] == "cuda":
        # the allocator's peak leaves out the CUDA context, which the plan counts as runtime
        peak = f"peak CUDA allocated {measured['peak_cuda_bytes'] / GIB:.2f} GiB (plan without runtime " + (
            f"~{(first.peak_bytes - first.memory['runtime']) / GIB:.2f} GiB)"
        )
    else:
        peak = f"peak RSS {measured['peak_rss_bytes'] / GIB:.2f} GiB (plan ~{first.peak_bytes / GIB:.2f} GiB)"
    rate = measured["tokens_per_second"]
    lines = [
        f"measured: {measured['steps']} optimizer step(s) of stage '{measured['stage']}' on {measured['device']}: "
        f"{peak}, {_seconds(measured['seconds_per_step'])} s/step"
        + (f", {rate:.0f} tokens/s" if rate else "")
    ]
    if rate:
        for s in result["stages"]:
            # tokens the stage feeds through the model: its examples' tokens once per epoch
            lines.append(f"  stage '{s.name}': about {s.tokens * s.epochs / rate / 60:.1f} min at that rate")
    return "\n".join(lines)
