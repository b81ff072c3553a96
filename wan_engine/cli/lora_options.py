"""The LoRA options of every command that loads a model (generate, serve, export): `--lora` for one
DiT, `--high-noise-lora` / `--low-noise-lora` for a two-expert model's experts."""
from __future__ import annotations


def add_lora_options(p) -> None:
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="merge a LoRA into the DiT at load (repeatable, applied in order; strength default 1)")
    for expert in ("high", "low"):
        p.add_argument(f"--{expert}-noise-lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                       help=f"two-expert models (Wan2.2 A14B): merge a LoRA into the {expert}-noise expert "
                            f"(repeatable)")


def parse_lora_options(args):
    """--lora for one DiT, or {expert: specs} from --high-noise-lora / --low-noise-lora."""
    from ..lora import LoraSpec

    if not (args.high_noise_lora or args.low_noise_lora):
        return [LoraSpec.parse(text) for text in args.lora]
    if args.lora:
        raise ValueError("give --lora (one-DiT models) or --high-noise-lora / --low-noise-lora (two-expert models), "
                         "not both")
    return {"high_noise": [LoraSpec.parse(t) for t in args.high_noise_lora],
            "low_noise": [LoraSpec.parse(t) for t in args.low_noise_lora]}


def check_lora_options(args, two_experts: bool) -> None:
    """Refuse the other kind of model's LoRA options, before the load."""
    if two_experts and args.lora:
        raise ValueError(f"--lora: {args.model} is a two-expert model (Wan2.2 A14B); name the expert of each LoRA "
                         f"with --high-noise-lora / --low-noise-lora")
    if not two_experts and (args.high_noise_lora or args.low_noise_lora):
        raise ValueError(f"--high-noise-lora / --low-noise-lora apply to two-expert models; {args.model} has one "
                         f"DiT, use --lora")
