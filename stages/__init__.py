"""The built-in stages: the only list of them. Each module defines STAGE; imported only when used."""

STAGES = {
    "ingest": "stages.ingest",
    "filter": "stages.filter",
    "dedup": "stages.dedup",
    "decontaminate": "stages.decontaminate",
    "classify": "stages.classify",
    "train_classifier": "stages.train_classifier",
    "train_tokenizer": "stages.train_tokenizer",
    "tokenize": "stages.tokenize",
    "pretrain": "stages.pretrain",
    "sft": "stages.sft",
    "dpo": "stages.dpo",
    "distill": "stages.distill",
    "reward_model": "stages.reward_model",
    "grpo": "stages.grpo",
    "evaluate": "stages.evaluate",
    "quantize": "stages.quantize",
    "report": "stages.report",
}
