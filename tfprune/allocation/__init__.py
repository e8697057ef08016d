"""How much to prune where: budgets met exactly by global ranking, uniform ratios, or
rate-distortion dynamic programming (`rd_allocate`)."""

from tfprune.allocation.ranking import (AllocationProblem, GlobalRanking, Pool,  # noqa: F401
                                        UniformAllocation, get)
from tfprune.allocation.rd import RDAllocation, rd_allocate  # noqa: F401
