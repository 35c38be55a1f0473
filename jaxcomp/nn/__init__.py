from jaxcomp.nn.prompts import CoCoOp as CoCoOp, CoOp as CoOp, PromptParam as PromptParam  # noqa: I001
