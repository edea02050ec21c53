"""Talking to a chat checkpoint (the output of sft or dpo) through its chat template.

    llmpipe chat runs/sft/model                            # terminal chat: "> " prompt, streamed answers, /reset, /exit
    llmpipe chat runs/sft/model --message "Hi" --seed 3    # one answer on stdout, then exit (for scripts)
    printf 'Hi\\nAnd then?\\n' | llmpipe chat runs/sft/model  # one user turn per line, one answer per turn

Every answer is generated from the whole conversation rendered by render() with the generation
prompt, which is what the checkpoint's Jinja template gives through transformers
(tests/test_chat_template.py), and ends at <|end|> or eos. A conversation longer than the model's
context loses its oldest exchanges (the system message stays) until the answer has room for
max_new_tokens; a last message too long for that gets what is left, and one that leaves nothing
is refused in one line.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Iterator

from llmpipe.errors import InputError

HINT = "give the output of sft or dpo (a checkpoint with a chat template)"
COMMANDS = "/reset starts the conversation over, /exit quits"


def chat_template_of(directory: Path) -> str | None:
    """The checkpoint's chat template: chat_template.jinja wins over tokenizer_config.json, as in transformers 5."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    return json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.is_file() else None


def load_chat_model(checkpoint: str | Path):
    """(model in eval mode, tokenizer) of a chat checkpoint; one line (InputError) for anything else."""
    from llmpipe.generate import check_checkpoint, load_for_generation
    from llmpipe.text.chat_template import JINJA_TEMPLATE, role_ids
    from llmpipe.text.tokenizer import load_tokenizer

    path = Path(checkpoint)
    check_checkpoint(path, "chat", HINT)
    template = chat_template_of(path)
    if template is None:
        raise InputError(f"chat: {path} has no chat template, so it is a base model; fine-tune it with llmpipe sft first, or {HINT}")
    if template != JINJA_TEMPLATE:  # render() speaks llmpipe's template only; another one would be ignored silently
        raise InputError(f"chat: {path} has a chat template other than the one llmpipe sft writes; llmpipe chat renders only that one")
    try:
        role_ids(load_tokenizer(path))  # before torch is imported: a mistake is told at once
    except ValueError as e:
        raise InputError(f"chat: {e}") from None
    return load_for_generation(path, complete=False)


class Chat:
    """A conversation with a chat model: reply(text) streams the answer to one user message, and keeps both.

    Decoding is generate's (a llmpipe.decoding.Decoding, greedy by default): sampling draws from one
    generator seeded with its seed for the whole conversation, so the same lines give the same answers;
    reset() re-seeds it. An answer also ends at any of `stop` (strings; cut before it).
    """

    def __init__(self, model, tok, system: str | None = None, decoding=None, stop: tuple[str, ...] = ()):
        from llmpipe.decoding import Decoding
        from llmpipe.text.chat_template import role_ids

        self.model, self.tok, self.system = model, tok, system
        self.decoding, self.stop = decoding or Decoding(), tuple(s for s in stop if s)
        self.max_new_tokens = self.decoding.max_new_tokens
        self.context = model.config.max_seq_len
        self.stop_ids = {role_ids(tok)["end"], tok.special["eos"]}
        self.dropped_turns = 0  # user messages (with their answers) dropped to fit the context, over the whole session
        self.stopped_at_context = False  # the last answer was cut because the context was full
        self.reset()

    def reset(self) -> None:
        """Forget every turn but the system message."""
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system is not None else []
        self.generator = self.decoding.generator()

    def reply(self, text: str) -> Iterator[str]:
        """The answer to `text` as text pieces, streamed as tokens are made. The exchange joins the conversation
        when the pieces are all read (an answer left unread, e.g. after Ctrl-C, is not kept).

        InputError at once when the message alone leaves the answer no room in the context."""
        messages, ids = self._fit([*self.messages, {"role": "user", "content": text}])
        return self._stream(messages, ids)

    def _fit(self, messages: list[dict]) -> tuple[list[dict], list[int]]:
        """The conversation and its prompt ids, without the oldest exchanges while the answer has no room."""
        from llmpipe.text.chat_template import render

        head = messages[:1] if messages[0]["role"] == "system" else []
        turns = messages[len(head):]  # user, assistant, ..., user
        while True:
            ids, _ = render(head + turns, self.tok, add_generation_prompt=True)
            if len(ids) + self.max_new_tokens <= self.context or len(turns) == 1:
                break
            turns = turns[2:]
            self.dropped_turns += 1
        if len(ids) >= self.context:
            raise InputError(f"chat: the message is {len(ids)} tokens with the chat template{' and the system message' if head else ''}, "
                             f"which leaves no room for an answer in the model's context of {self.context} tokens; shorten it")
        return head + turns, ids

    def _stream(self, messages: list[dict], ids: list[int]) -> Iterator[str]:
        from llmpipe.generate import decode_stream, new_tokens

        made: list[int] = []

        def tokens():
            for token in new_tokens(self.model, ids, self.decoding, self.generator, self.stop_ids):
                made.append(token)
                if token not in self.stop_ids:
                    yield token

        text = shown = ""
        for piece in decode_stream(self.tok, tokens()):
            text += piece
            at = min((text.find(s) for s in self.stop if s in text), default=None)
            # show up to a stop string, holding back a tail that may be the start of one
            end = at if at is not None else len(text) - max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            if end > len(shown):
                yield text[len(shown):end]
                shown = text[:end]
            if at is not None:
                break
        else:
            if len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        answer = [t for t in made if t not in self.stop_ids]
        room = self.context - len(ids)
        self.stopped_at_context = room < self.max_new_tokens and len(made) == room and len(answer) == len(made)
        self.messages = [*messages, {"role": "assistant", "content": shown}]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _print_answer(chat: Chat, text: str) -> None:
    """Stream the answer to stdout, one line; notes (turns dropped, context full) go to stderr."""
    dropped = chat.dropped_turns
    pieces = chat.reply(text)
    if chat.dropped_turns and not dropped:
        _say(f"note: the conversation no longer fits the model's context of {chat.context} tokens; "
             "the oldest turns are dropped from now on (the system message is kept)")
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if chat.stopped_at_context:
        _say(f"note: the answer stopped early: the model's context of {chat.context} tokens is full")


def _lines(interactive: bool) -> Iterator[str]:
    if not interactive:
        yield from sys.stdin
        return
    import readline  # noqa: F401  (line editing and history for input())

    while True:
        try:
            yield input("> ")
        except EOFError:  # Ctrl-D
            print()
            return


def talk(chat: Chat, interactive: bool) -> int:
    """The chat loop on stdin, one user turn per non-empty line (/reset, /exit); the exit code.

    Without a terminal (piped stdin) nothing but the answers reaches stdout; a message too long for
    the context then ends the run with its one-line error, where a terminal shows it and goes on.
    """
    if interactive:
        _say(f"chatting with a model of context {chat.context} tokens; {COMMANDS}")
    try:
        for line in _lines(interactive):
            text = line.strip()
            if not text:
                continue
            if text == "/exit":
                return 0
            if text == "/reset":
                chat.reset()
                if interactive:
                    _say("(the conversation starts over)")
                continue
            if re.fullmatch(r"/\w+", text):
                _say(f"unknown command {text}: {COMMANDS}")
                continue
            try:
                _print_answer(chat, text)
            except InputError as e:
                if not interactive:
                    raise
                _say(f"error: {e}")
            except KeyboardInterrupt:  # Ctrl-C during an answer stops it; at the prompt it quits
                if not interactive:
                    raise
                print()
                _say("(answer interrupted; it is left out of the conversation)")
    except KeyboardInterrupt:
        if interactive:
            print()
            return 0
        return 130
    return 0


def run(checkpoint: str | Path, message: str | None = None, system: str | None = None, **sampling) -> int:
    """`llmpipe chat`: one answer to `message`, else the chat loop on stdin; returns the exit code."""
    try:
        model, tok = load_chat_model(checkpoint)
        chat = Chat(model, tok, system=system, **sampling)
        if message is not None:
            _print_answer(chat, message)
            return 0
        return talk(chat, interactive=sys.stdin.isatty())
    except KeyboardInterrupt:  # while loading, or a scripted run: quit without a traceback
        return 130
