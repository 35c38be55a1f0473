from jaxcomp.nn.losparse import LoSparseLinear, convert, losparse_pruning  # noqa: F401
