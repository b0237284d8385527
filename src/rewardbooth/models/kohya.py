"""A LoRA in the kohya key layout (`lora_unet_*.lora_down/lora_up/alpha`), the file ComfyUI and kohya-style
loaders read, besides the diffusers/PEFT file: written for Stable Diffusion 1.x/2.x, SDXL, SD3 and FLUX.

Names are kohya sd-scripts': `lora_unet_` + the denoiser's module path with `.` -> `_`, `lora_te_` (SD) or
`lora_te1_`/`lora_te2_` (SDXL) + the text encoder's. SD and SDXL keep diffusers' UNet paths (as sd-scripts
writes for SD 1.x; ComfyUI's loader maps them for SDXL too); SD3 and FLUX take the original
checkpoints' paths (SAI's `joint_blocks.*`, BFL's `double_blocks.*`/`single_blocks.*`), which ComfyUI matches
against its own model's weights. There, q, k and v (and FLUX's single-block MLP input) are one fused weight:
their adapters are stacked into one of rank sum(r_i), down = cat(A_i) and up block-diagonal in the B_i, with
alpha scaled by the same factor, so that alpha / rank (the scale every loader applies) is unchanged:
    up @ down = cat_i(B_i A_i) over the fused rows, zero rows for a part without adapter.
The inverse maps are diffusers' own: `_convert_non_diffusers_lora_to_diffusers` (SD, SDXL),
`_convert_kohya_flux_lora_to_diffusers`, and the single-file converters of the original SD3/FLUX checkpoints
(tests/contract/test_lora_formats.py checks each).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

KOHYA_WEIGHT_NAME = "pytorch_lora_weights_kohya.safetensors"

# Per family: diffusers block list -> (the original checkpoint's block list, {its module: the diffusers modules
# stacked in its rows, in order}). From sd-scripts' FLUX conversion (networks/convert_flux_lora.py, as diffusers'
# `_convert_kohya_flux_lora_to_diffusers` reads it) and SAI's MMDiT (diffusers' `convert_sd3_transformer_...`).
QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
CONTEXT_QKV = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")
FLUX_BLOCKS = {
    "transformer_blocks": ("double_blocks", {
        "img_attn.qkv": QKV, "img_attn.proj": ("attn.to_out.0",),
        "txt_attn.qkv": CONTEXT_QKV, "txt_attn.proj": ("attn.to_add_out",),
        "img_mlp.0": ("ff.net.0.proj",), "img_mlp.2": ("ff.net.2",),
        "txt_mlp.0": ("ff_context.net.0.proj",), "txt_mlp.2": ("ff_context.net.2",)}),
    "single_transformer_blocks": ("single_blocks", {"linear1": (*QKV, "proj_mlp"), "linear2": ("proj_out",)}),
}
SD3_BLOCKS = {
    "transformer_blocks": ("joint_blocks", {
        "x_block.attn.qkv": QKV, "x_block.attn.proj": ("attn.to_out.0",),
        "context_block.attn.qkv": CONTEXT_QKV, "context_block.attn.proj": ("attn.to_add_out",),
        "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"), "x_block.attn2.proj": ("attn2.to_out.0",),
        "x_block.mlp.fc1": ("ff.net.0.proj",), "x_block.mlp.fc2": ("ff.net.2",),
        "context_block.mlp.fc1": ("ff_context.net.0.proj",), "context_block.mlp.fc2": ("ff_context.net.2",)}),
}
ORIGINAL_LAYOUTS = {"stable-diffusion-3": SD3_BLOCKS, "flux": FLUX_BLOCKS}
# Text encoder prefixes of the UNet families (kohya: one encoder `lora_te_`, two `lora_te1_`, `lora_te2_`).
TEXT_ENCODER_PREFIXES = {"stable-diffusion": {"text_encoder": "lora_te_"},
                         "stable-diffusion-xl": {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}}
PORTABLE_FAMILIES = (*TEXT_ENCODER_PREFIXES, *ORIGINAL_LAYOUTS)


class NotPortable(ValueError):
    """A trained adapter the kohya layout has no place for (the diffusers file still holds it)."""


def adapters(peft_state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """peft's `<module>.lora_A.weight` / `.lora_B.weight` pairs by module: {module: (A (r, in), B (out, r))}."""
    modules = {key.rsplit(".lora_A.", 1)[0] for key in peft_state if ".lora_A." in key}
    leftover = set(peft_state) - {f"{m}.lora_{ab}.weight" for m in modules for ab in "AB"}
    if leftover:
        raise NotPortable(f"{sorted(leftover)[0]} is not a plain LoRA weight")
    return {m: (peft_state[f"{m}.lora_A.weight"].detach(), peft_state[f"{m}.lora_B.weight"].detach())
            for m in modules}


def original_module(layout: dict, module: str) -> tuple[str, int]:
    """The original checkpoint's module holding diffusers' `module`, and which of its stacked parts it is."""
    blocks, index, rest = (module.split(".", 2) + ["", ""])[:3]
    if blocks in layout and index.isdigit():
        original_blocks, modules = layout[blocks]
        for name, stacked in modules.items():
            if rest in stacked:
                return f"{original_blocks}.{index}.{name}", stacked.index(rest)
    raise NotPortable(f"{module} has no counterpart in the original checkpoint's layout")


def kohya_name(prefix: str, module: str) -> str:
    return prefix + module.replace(".", "_")


def clip_module(module: str) -> str:
    """CLIP's module path as kohya and ComfyUI name it (`text_model.encoder.layers.N...`): transformers 5's
    CLIPTextModel dropped the `text_model.` level that CLIPTextModelWithProjection keeps."""
    return f"text_model.{module}" if module.startswith(("encoder.", "embeddings.", "final_layer_norm")) else module


def fuse(parts: list[tuple[torch.Tensor, torch.Tensor] | None], rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter for a fused weight: down = cat(A_i), up block-diagonal in the B_i (zero rows for a part
    without adapter). Shape: A_i (r_i, in), B_i (rows_i, r_i) -> down (sum r_i, in), up (sum rows_i, sum r_i)"""
    present = [pair for pair in parts if pair is not None]
    down = torch.cat([a for a, _ in present])
    up = down.new_zeros(sum(rows), down.shape[0])
    row = col = 0
    for pair, height in zip(parts, rows, strict=True):
        if pair is not None:
            rank = pair[0].shape[0]
            up[row:row + height, col:col + rank] = pair[1]
            col += rank
        row += height
    return down, up


def original_layout_state(layout: dict, pairs: dict, alpha: float, rows_of: Callable[[str], int]) -> dict:
    """SD3/FLUX: adapters of the fused originals built from diffusers' separate ones (module docstring)."""
    fused: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for module, pair in pairs.items():
        name, part = original_module(layout, module)
        fused.setdefault(name, {})[part] = pair
    state = {}
    for name, parts in fused.items():
        blocks, index, rest = name.split(".", 2)
        diffusers_blocks = next(b for b, (original, _) in layout.items() if original == blocks)
        stacked = [f"{diffusers_blocks}.{index}.{m}" for m in layout[diffusers_blocks][1][rest]]
        down, up = fuse([parts.get(i) for i in range(len(stacked))], [rows_of(m) for m in stacked])
        key = kohya_name("lora_unet_", name)
        rank = parts[next(iter(parts))][0].shape[0]
        state.update({f"{key}.lora_down.weight": down.contiguous(), f"{key}.lora_up.weight": up.contiguous(),
                      f"{key}.alpha": torch.tensor(alpha * down.shape[0] / rank)})
    return state


def kohya_state_dict(family: str, components: dict[str, tuple[dict, float]], denoiser: torch.nn.Module) -> dict:
    """The whole LoRA in the kohya layout. `components`: {"denoiser" or a text encoder's pipeline name:
    (its peft state, its lora_alpha)}. Raises NotPortable when a family or an adapter has no kohya name."""
    if family not in PORTABLE_FAMILIES:
        raise NotPortable(f"the {family} family has no kohya/ComfyUI LoRA layout here")
    state = {}
    for component, (peft_state, alpha) in components.items():
        pairs = adapters(peft_state)
        if component == "denoiser" and family in ORIGINAL_LAYOUTS:
            def rows_of(module: str) -> int:
                return denoiser.get_submodule(module).out_features
            state.update(original_layout_state(ORIGINAL_LAYOUTS[family], pairs, alpha, rows_of))
            continue
        prefix = "lora_unet_" if component == "denoiser" else TEXT_ENCODER_PREFIXES.get(family, {}).get(component)
        if prefix is None:
            raise NotPortable(f"the {family} family's {component} has no kohya prefix")
        for module, (down, up) in pairs.items():
            key = kohya_name(prefix, module if component == "denoiser" else clip_module(module))
            state.update({f"{key}.lora_down.weight": down.contiguous(), f"{key}.lora_up.weight": up.contiguous(),
                          f"{key}.alpha": torch.tensor(float(alpha))})
    return state
