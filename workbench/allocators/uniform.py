"""Uniform allocation: every block gets the global target."""

from workbench.allocators import AllocationContext, Allocator, ALLOCATORS


def allocate_uniform(ctx: AllocationContext, sparsity: float) -> list[float]:
    """The global target for every block."""
    return [sparsity] * len(ctx.block_numels)


ALLOCATORS.add(Allocator("uniform", allocate_uniform, description="the same sparsity in every block"))
