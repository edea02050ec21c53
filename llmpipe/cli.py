"""The `llmpipe` command: run/status/inspect/task plus one subcommand per stage, built from its Params.

User mistakes print one line and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

import click

from llmpipe.errors import DataError, StepFailed, UserError

_DEBUG = "--debug" in sys.argv[: sys.argv.index("--") if "--" in sys.argv else len(sys.argv)]


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _click_option(f: dataclasses.Field, tp) -> click.Option:
    from llmpipe.config import field_help

    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")) and len(args) == 1:
        tp, origin = args[0], typing.get_origin(args[0])
    kw: dict = {"help": field_help(f), "default": None, "show_default": False}
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is not None:
        kw["help"] += f"  [default: {default}]"
    name = option_name(f.name)
    if tp is bool:
        return click.Option([f"{name}/--no-{name[2:]}", f.name], **kw)
    if origin is typing.Literal:
        kw["type"] = click.Choice([str(a) for a in typing.get_args(tp)])
    elif origin in (list, tuple):
        kw.update(multiple=True, default=None, type={int: int, float: float}.get(typing.get_args(tp)[0], str))
    else:
        kw["type"] = {int: int, float: float}.get(tp, str)
    return click.Option([name, f.name], **kw)


def stage_command(stage_name: str) -> click.Command:
    """Build `llmpipe <stage>` from the stage's Params: one --kebab-case option per field."""
    from llmpipe.config import param_types
    from llmpipe.registry import get_stage

    stage = get_stage(stage_name)
    types_ = param_types(stage.params)
    params = [
        click.Option(["--input", "inputs"], multiple=True, required=True, help="Input artifact, file, directory or glob (repeatable)."),
        click.Option(["--output", "output"], required=True, type=click.Path(path_type=Path), help="Output artifact directory."),
        click.Option(["--workers"], type=int, default=1, show_default=True, help="Parallel worker processes."),
        click.Option(["--force"], is_flag=True, help="Re-run even when the output is fresh."),
    ]
    params += [_click_option(f, types_[f.name]) for f in dataclasses.fields(stage.params)]

    def callback(inputs, output, workers, force, **values):
        from llmpipe.api import run_stage

        ctx = click.get_current_context()
        given = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()
                 if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
        manifest = run_stage(stage_name, list(inputs), output, workers=workers, force=force, _flags=True, **given)
        if manifest is not None:  # None: a Slurm array element whose peer writes the manifest
            _print_counts(manifest)

    return click.Command(stage_name.replace("_", "-"), params=params, callback=callback, help=stage_help(stage.doc), short_help=stage.summary)


def report_command() -> click.Command:
    """`llmpipe report`: the report stage's command (--input ARTIFACT ... --output DIR), which also takes a
    pipeline file instead of inputs: `llmpipe report PIPELINE.toml [--output DIR]` reports on every step."""
    cmd = stage_command("report")
    for p in cmd.params:
        if p.name in ("inputs", "output"):
            p.required = False
    cmd.params.insert(0, click.Argument(["pipeline_file"], required=False, type=click.Path(path_type=Path)))
    run_on_inputs = cmd.callback

    def callback(pipeline_file, inputs, output, workers, force, **values):
        if pipeline_file is None:
            if not inputs or output is None:
                raise UserError("report: give a pipeline file (llmpipe report pipelines/pretrain.toml) or --input ARTIFACT ... --output DIR")
            return run_on_inputs(inputs=inputs, output=output, workers=workers, force=force, **values)
        if inputs:
            raise UserError(f"report --input: give a pipeline file ({pipeline_file}) or --input artifacts, not both")
        from llmpipe.report.pipeline_report import report_pipeline

        ctx = click.get_current_context()
        given = {k: v for k, v in values.items() if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
        manifest = report_pipeline(pipeline_file, output, force, **given)
        _print_counts(manifest)

    cmd.callback = callback
    return cmd


def help_example(doc: str) -> str:
    """The stage's first example command: runnable from the repository root after the quickstart."""
    return next(line.strip() for line in doc.splitlines() if line.strip().startswith("llmpipe "))


def stage_help(doc: str) -> str:
    """The summary, then the first example (a newcomer's first question), then the rest of the docstring;
    indented example blocks are marked so click prints them as written instead of re-wrapping them."""
    import inspect

    example = help_example(doc)
    summary, _, rest = inspect.cleandoc(doc).partition("\n\n")
    rest = "\n".join(line for line in rest.splitlines() if line.strip() != example)
    blocks = [summary, f"\b\nExample (after the quickstart, from the repository root):\n    {example}"] + rest.split("\n\n")
    return "\n\n".join("\b\n" + b if any(line.startswith("    ") for line in b.splitlines()) and not b.startswith("\b") else b
                       for b in blocks if b.strip())


def _print_counts(manifest: dict) -> None:
    counts = manifest.get("counts", {})
    if counts:
        click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))


class Interrupted(Exception):
    """Ctrl-C inside a command; raised past click, which would print a blank line of its own."""


class LlmpipeGroup(click.Group):
    """Fixed commands plus one lazily built command per stage."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None

    def list_commands(self, ctx):
        from llmpipe.registry import builtin_stages

        return sorted(super().list_commands(ctx)) + sorted(n.replace("_", "-") for n in builtin_stages())

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        from llmpipe.registry import builtin_stages

        if name == "report":
            return report_command()
        if name.replace("-", "_") in builtin_stages():
            return stage_command(name.replace("-", "_"))
        return None

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            from llmpipe.errors import did_you_mean

            if args and not args[0].startswith("-"):
                raise click.UsageError(f'unknown command "{args[0]}"{did_you_mean(args[0], self.list_commands(ctx))}') from None
            raise e


@click.group(cls=LlmpipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="llmpipe")
def cli(debug):
    """Build a language model end to end from composable stages.

    \b
    llmpipe run pipelines/pretrain.toml      run a pipeline file (skips fresh steps)
    llmpipe status pipelines/pretrain.toml   what is fresh, stale or missing, and why
    llmpipe dedup --input A --output B       one stage alone, same params as in a pipeline
    """


@cli.command()
@click.argument("pipeline_file", type=click.Path(path_type=Path))
@click.option("--only", multiple=True, help="Run only this step (repeatable).")
@click.option("--from", "start", help="Start at this step.")
@click.option("--until", help="Stop after this step.")
@click.option("--force", is_flag=True, help="Re-run selected steps even when fresh.")
@click.option("--dry-run", is_flag=True, help="Print what would run and why; run nothing.")
@click.option("--set", "overrides", multiple=True, metavar="STEP.KEY=VALUE", help="Override a step parameter.")
@click.option("--executor", type=click.Choice(["local", "slurm"]), help="Where tasks run (default: the file's [pipeline] executor).")
@click.option("--workers", type=int, help="Local worker processes (default: the file's [pipeline] workers).")
def run(pipeline_file, only, start, until, force, dry_run, overrides, executor, workers):
    """Run a pipeline file; fresh steps are skipped."""
    from llmpipe.pipeline import load_pipeline
    from llmpipe.runner import run_pipeline

    pipe = load_pipeline(pipeline_file, list(overrides))
    run_pipeline(pipe, executor, workers, list(only), start, until, force, dry_run)


@cli.command()
@click.argument("pipeline_file", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="STEP.KEY=VALUE")
def status(pipeline_file, overrides):
    """Print every step as fresh / stale (and why) / incomplete / missing."""
    from llmpipe.pipeline import load_pipeline
    from llmpipe.runner import plan_status, print_status

    print_status(plan_status(load_pipeline(pipeline_file, list(overrides))))


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--rows", default=3, show_default=True, help="Rows to show.")
def inspect(artifact, rows):
    """Show an artifact's manifest, counts, stats and a few rows, or a GGUF file's header, metadata and tensors."""
    from llmpipe.inspect import inspect_artifact

    inspect_artifact(artifact, rows)


def sampling_options(command):
    """The decoding flags of generate and chat: one list, so the two commands never drift apart."""
    options = [
        click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=0),
                     help="Tokens to generate (per answer in chat; fewer when the model's context fills up)."),
        click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0), help="0 is greedy; above 0 samples."),
        click.option("--top-k", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Sampling: keep the k most likely tokens (and any tied with the k-th); 0 keeps all."),
        click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
                     help="Sampling: keep the smallest set of most likely tokens with this much probability (0 < p <= 1)."),
        click.option("--min-p", default=0.0, show_default=True, type=click.FloatRange(0, 1),
                     help="Sampling: keep tokens at least this fraction as likely as the most likely one; 0 keeps all."),
        click.option("--repetition-penalty", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     help="Lower tokens already in the text (CTRL's: a score divided by it, or multiplied when negative); 1 is off."),
        click.option("--stop", multiple=True, help="Stop at this string, cut before it (repeatable); eos always stops."),
        click.option("--seed", default=0, show_default=True, help="Sampling seed."),
    ]
    for option in reversed(options):  # click lists options in decoration order, bottom up
        command = option(command)
    return command


def decoding(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, num_beams=1, length_penalty=1.0):
    """The flags as a llmpipe.decoding.Decoding; a combination that means nothing is one line."""
    from llmpipe.decoding import Decoding
    from llmpipe.errors import InputError

    d = Decoding(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                 repetition_penalty=repetition_penalty, num_beams=num_beams, length_penalty=length_penalty, seed=seed)
    if d.problem():
        raise InputError(d.problem())
    return d


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--prompt", default="", help="Text to continue.")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path),
              help="A file of prompts: one per line, or JSONL with a \"prompt\" field; writes one JSON line per prompt.")
@click.option("--output", type=click.Path(path_type=Path), help="With --prompts: the JSONL file to write (default: stdout).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="With --prompts: prompts decoded together.")
@click.option("--num-beams", default=1, show_default=True, type=click.IntRange(min=1), help="Beam search with this many beams (1: off).")
@click.option("--length-penalty", default=1.0, show_default=True, type=float,
              help="Beam search: a hypothesis scores its log-probability / length ** this (> 0 favours longer ones).")
@sampling_options
def generate(checkpoint, prompt, prompts_file, output, batch_size, num_beams, length_penalty, stop, **flags):
    """Continue a prompt, or every prompt of a file, with a checkpoint (KV cache; greedy, sampling or beam search).

    \b
    Example (after the quickstart, from the repository root):
        llmpipe generate runs/pretrain/model --prompt "The" --temperature 0.8 --top-k 50 --top-p 0.95

    Strategies and flags mean what they mean in transformers' generate(), which gives the same tokens.
    """
    from llmpipe.generate import complete, load_for_generation, read_prompts, write_completions

    d = decoding(**flags, num_beams=num_beams, length_penalty=length_penalty)
    if prompts_file is None and output is not None:
        raise UserError("generate --output: it holds the completions of --prompts; give --prompts FILE too")
    prompts = read_prompts(prompts_file) if prompts_file is not None else None
    model, tok = load_for_generation(checkpoint)
    if prompts is None:
        out = complete(model, tok, [prompt], d, stop)[0]
        click.echo(out.text)  # prompt included
        if out.stopped_at_context:  # after the text, so nothing generated is lost
            click.echo(f"note: stopped after {out.new_tokens} of {d.max_new_tokens} new tokens: the model's context of {out.context} tokens "
                       "is full (prompt and bos included)", err=True)
        return
    write_completions(model, tok, prompts, d, stop, batch_size, output)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--message", default=None, help="Answer this one message on stdout and exit (for scripts).")
@click.option("--system", default=None, help="System message that opens the conversation.")
@sampling_options
def chat(checkpoint, message, system, stop, **flags):
    """Talk to a chat checkpoint (sft or dpo output) through its chat template; answers stream as they are made.

    In a terminal: a "> " prompt, /reset starts over, /exit (or Ctrl-D) quits. With piped stdin each
    non-empty line is a user turn and the answers, one per turn, are all stdout holds.
    """
    from llmpipe.chat import run

    sys.exit(run(checkpoint, message, system, decoding=decoding(**flags), stop=stop))


@cli.command(hidden=True)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--phase", type=int)
@click.option("--task", type=int, help="Task index; default: $SLURM_ARRAY_TASK_ID.")
@click.option("--task-offset", type=int, default=0, help="Added to $SLURM_ARRAY_TASK_ID (arrays past Slurm's size limit).")
@click.option("--finalize", is_flag=True, help="Write the manifest once every task is recorded.")
def task(out, phase, task, task_offset, finalize):
    """Run one task of a prepared step (used by executors: process pool, Slurm, torchrun)."""
    import os

    from llmpipe import step as step_mod

    if finalize:
        step_mod.finalize(out)
        return
    if task is None:
        task = int(os.environ["SLURM_ARRAY_TASK_ID"]) + task_offset
    step_mod.run_task(out, phase, task)


@cli.command("stages")
def list_stages():
    """List the stages and what each does."""
    from llmpipe.registry import builtin_stages, get_stage

    for name in sorted(builtin_stages()):
        click.echo(f"{name.replace('_', '-'):<18} {get_stage(name).summary}")


def _without_debug(args: list[str]) -> list[str]:
    """--debug is accepted anywhere before a "--" (it is read from sys.argv at import), not only before the subcommand."""
    end = args.index("--") if "--" in args else len(args)
    return [a for a in args[:end] if a != "--debug"] + args[end:]


def _interrupted() -> None:
    """Ctrl-C: one line, exit 130. Tasks are recorded when done and outputs renamed into place only
    when complete, so the same command picks up where this one stopped."""
    import shlex

    command = shlex.join(["llmpipe", *_without_debug(sys.argv[1:])])
    if sys.stderr.isatty():
        click.echo(err=True)  # past the terminal's ^C
    click.echo(f"interrupted: finished tasks are kept; resume with: {command}", err=True)
    sys.exit(130)


def main() -> None:
    try:
        cli.main(args=_without_debug(sys.argv[1:]), prog_name="llmpipe", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:  # one line like every other user mistake
        cmd = e.ctx.command_path if e.ctx else "llmpipe"
        click.echo(f"error: {e.format_message()} (see {cmd} --help)", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (Interrupted, click.exceptions.Abort, KeyboardInterrupt):  # Abort: click's word for a Ctrl-C while parsing
        _interrupted()
    except (UserError, DataError, StepFailed) as e:
        if _DEBUG:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # a bug or a failed task: one line, and the traceback with --debug
        if _DEBUG:
            raise
        exit_code = getattr(e, "exit_code", 1)
        click.echo(f"error: {type(e).__name__}: {e} (re-run with --debug for the traceback)", err=True)
        sys.exit(exit_code)
