"""Every template class of the conformance suite, parametrized over the installed backends by the plugin."""
from unicompress.conformance.templates import (TestContract, TestCrossBackend, TestDistillation,  # noqa: F401
                                               TestFineTune, TestLowRank, TestPruning, TestQuantization)
