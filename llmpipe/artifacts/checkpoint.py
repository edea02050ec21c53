"""Checkpoints: `model.safetensors` + Hugging Face `config.json`, written to a temp dir and renamed.

Training state (optimizer tensors, data position, loop counters) sits beside them as
safetensors + JSON, never as pickles.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmpipe.artifacts.layout import atomic_path
from llmpipe.artifacts.verify import check_artifact
from llmpipe.errors import InputError


# the tokenizer files a model directory carries, so transformers' AutoTokenizer loads it beside the model
TOKENIZER_FILES = ("tokenizer.model", "special_tokens.json", "tokenizer.json", "tokenizer_config.json")


def save_tensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """safetensors.torch.save_file; called inside atomic_path, which gives the file the usual mode (safetensors writes 0600)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def save_checkpoint(path: Path, tensors: dict, config: dict, state: dict | None = None, state_tensors: dict | None = None) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.mkdir(parents=True)
        # safetensors refuses shared storage (tied embeddings): store independent copies.
        save_tensors({k: v.detach().contiguous().clone() for k, v in tensors.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        if state is not None:
            (tmp / "training_state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
        if state_tensors:
            save_tensors({k: v.detach().contiguous() for k, v in state_tensors.items()}, tmp / "training_state.safetensors")


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[dict, dict, dict | None, dict | None]:
    """(tensors, config, training state, training state tensors); InputError naming the file that cannot be read."""
    path = Path(path)
    check_artifact(path)  # a complete checkpoint artifact (generate, chat, evaluate) is as its step wrote it
    tensors = load_tensors(path / "model.safetensors", device)
    config = read_json_object(path / "config.json")
    state = read_json_object(path / "training_state.json") if (path / "training_state.json").exists() else None
    st = path / "training_state.safetensors"
    state_tensors = load_tensors(st, device) if st.exists() else None
    return tensors, config, state, state_tensors


def load_tensors(path: Path, device: str = "cpu") -> dict:
    """safetensors' load_file; a file it cannot read (a damaged header, data past the end) is one InputError.

    safetensors checks every offset against the file's size before it reads, so a header that claims a
    huge tensor is refused, never allocated."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except SafetensorError as e:
        reason = " ".join(str(e).removeprefix("Error while deserializing header: ").split())[:160]
        raise InputError(f"{path}: not a safetensors file llmpipe can read ({reason}); re-run the step that wrote it") from None
    except (TypeError, ValueError) as e:  # a dtype torch lacks, a shape it refuses
        raise InputError(f"{path}: its tensors cannot be loaded ({' '.join(str(e).split())[:160]}); re-run the step that wrote it") from None


def read_json_object(path: Path) -> dict:
    """A JSON object file of a checkpoint (config, training state); InputError when it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: not valid JSON ({' '.join(str(e).split())[:120]}); re-run the step that wrote it") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, got a JSON {type(value).__name__}; re-run the step that wrote it")
    return value


def write_model_dir(out: Path, state_dict: dict, hf_config: dict, tokenizer: str | Path = "") -> None:
    """A model directory transformers loads: model.safetensors, config.json and the tokenizer files, each renamed into place."""
    out = Path(out)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_tensors(tensors, tmp, metadata={"format": "pt"})
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(hf_config, indent=1, sort_keys=True))
    if tokenizer:
        tok = Path(tokenizer)
        for name in TOKENIZER_FILES if tok.is_dir() else ():
            if (tok / name).exists():
                with atomic_path(out / name) as tmp:
                    shutil.copyfile(tok / name, tmp)
        if tok.is_file():
            with atomic_path(out / "tokenizer.model") as tmp:
                shutil.copyfile(tok, tmp)
