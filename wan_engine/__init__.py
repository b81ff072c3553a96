"""wan_engine: a performance-first inference engine for the Wan video diffusion models."""
