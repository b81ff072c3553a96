"""The Wan VAE for inference: fixed-shape chunk functions with explicit feature caches (`static`),
and a spatially tiled, memory-bounded decode built on them (`tiling`)."""
from .static import StaticChunks, decoder_chunks, decoder_parts, encoder_chunks, static_decode, static_encode
from .tiling import TilePlan, tiled_decode

__all__ = ["StaticChunks", "TilePlan", "decoder_chunks", "decoder_parts", "encoder_chunks", "static_decode",
           "static_encode", "tiled_decode"]
