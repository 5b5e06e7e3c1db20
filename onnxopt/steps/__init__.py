"""Pipeline steps. Each module exposes ``run(src, dst, cfg, ctx) -> StepResult``."""
