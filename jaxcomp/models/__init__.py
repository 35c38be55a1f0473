from jaxcomp.models import bert, weights  # noqa: F401
