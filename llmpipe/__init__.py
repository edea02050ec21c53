"""llmpipe: composable stages that build a language model end to end, from crawl to chat model."""

__version__ = "0.1.0"


def run_stage(name, inputs, output, **kwargs):
    """Run one stage on local inputs (see llmpipe.api.run_stage); imported lazily to keep startup fast."""
    from llmpipe.api import run_stage as _run_stage

    return _run_stage(name, inputs, output, **kwargs)
