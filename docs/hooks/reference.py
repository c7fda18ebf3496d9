"""A MkDocs hook: the reference pages that are generated from the code at every build, so they cannot drift.

- reference/cli.md: every command and option of `tune-losses`, from the argparse parser (tune_losses/cli.py);
- reference/search-space.md: every field of a search space, from the pydantic models (tune_losses/spaces.py,
  tune_losses/training/config.py): type, default, allowed values, and the comment written beside the field;
- reference/mlflow-record.md: every tag, param, metric and artifact of a parent and a trial run, from
  tune_losses/tracking/record.py (``FIELDS``), or a note while that module does not exist.

Nothing generated is committed: the pages exist only in the built site. The renderers are plain functions of
their input (a parser, a model, a list of fields), so tests/test_docs.py checks them without a build.
"""

from __future__ import annotations

import argparse
import ast
import html
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

GENERATED = "Generated at build time from `{source}` (docs/hooks/reference.py): do not edit."


# ---------------------------------------------------------------------------------------------- the CLI


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for its subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _argument_row(action: argparse.Action) -> str | None:
    if isinstance(action, argparse._HelpAction):
        return None
    if action.option_strings:
        name = ", ".join(f"`{o}`" for o in action.option_strings)
        if action.nargs != 0:
            name += f" `{action.metavar or action.dest.upper()}`"
    else:
        name = f"`{action.metavar or action.dest}`" + (" (optional)" if action.nargs == "?" else "")
    meaning = [action.help or ""]
    if action.choices:
        meaning.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    if isinstance(action, argparse._AppendAction):
        meaning.append("may be given more than once")
    if isinstance(action, argparse._CountAction):
        meaning.append("may be repeated (`-vv`)")
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) or isinstance(action, argparse._CountAction) else default
    cells = [name, f"`{shown}`" if shown != "" else "", _cell("; ".join(m for m in meaning if m))]
    return "| " + " | ".join(cells) + " |"


def cli_page(parser: argparse.ArgumentParser, source: str = "tune_losses/cli.py") -> str:
    """Markdown for every command of ``parser`` (its usage and one row per argument)."""
    lines = ["# Command line", "", GENERATED.format(source=source), ""]
    if parser.description:
        lines += [_escape(parser.description.strip()), ""]
    helps = _helps(parser)
    for name, sub in _subcommands(parser).items():
        lines += [f"## {parser.prog} {name}", "", _escape(helps.get(name, "")), ""]
        usage = " ".join(sub.format_usage().removeprefix("usage: ").split())
        lines += ["```text", usage, "```", ""]
        rows = [r for r in map(_argument_row, sub._actions) if r]
        if rows:
            lines += ["| argument | default | meaning |", "| --- | --- | --- |", *rows, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the search-space schema


def _comments(cls: type) -> dict[str, str]:
    """The comments written beside each field of a class: the lines right above it and the one at its end."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    trailing = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1][: tok.start[1]].strip():
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    out = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, row = [], node.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#"):
            above.insert(0, lines[row].strip().lstrip("#").strip())
            row -= 1
        text = " ".join([*above, trailing.get(node.end_lineno or node.lineno, "")]).strip()
        if text:
            out[node.target.id] = text
    return out


def _type_text(ann: Any, named: dict) -> str:
    """A field's type in words: Literal values listed, models linked to their section, None as null."""
    if ann in named:
        return named[ann]
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:
        return _type_text(args[0], named)
    if origin is Literal:
        return "one of " + ", ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (Union, types.UnionType):
        parts = [_type_text(a, named) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or `null`" if type(None) in args else "")
    if origin is list:
        return "list" if args in ((), (Any,)) else f"list of {_type_text(args[0], named)}"
    if origin is tuple:
        return "[" + ", ".join(_type_text(a, named) for a in args) + "]"
    if origin is dict:
        return "mapping" if len(args) < 2 or args[1] is Any else f"mapping to {_type_text(args[1], named)}"
    if _is_model(ann):
        return f"[{ann.__name__}](#{ann.__name__.lower()})"
    if ann is Any:
        return "any"
    return getattr(ann, "__name__", str(ann))


CONSTRAINTS = {"gt": "> {}", "ge": ">= {}", "lt": "< {}", "le": "<= {}", "min_length": "at least {} value(s)"}


def _constraints(field: Any) -> list[str]:
    out = []
    for meta in field.metadata:
        for attr, form in CONSTRAINTS.items():
            if getattr(meta, attr, None) is not None:
                out.append(form.format(getattr(meta, attr)))
    return out


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if _is_model(type(value)):
        return "its defaults"
    return f"`{json.dumps(value)}`"


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and hasattr(obj, "model_fields") and hasattr(obj, "model_validate")


def _models_below(model: type) -> list[type]:
    """``model`` and every pydantic model its fields hold, depth first, each once."""
    found: list[type] = []

    def visit(ann: Any) -> None:
        if _is_model(ann) and ann not in found:
            found.append(ann)
            for field in ann.model_fields.values():
                visit(field.annotation)
        for arg in get_args(ann):
            visit(arg)

    visit(model)
    return found


def _named_phrase(field: Any, named: dict) -> str | None:
    """The phrase for a field declared with one of ``named``'s Annotated types: pydantic keeps the type's
    validators in the field's metadata (the same objects), not the Annotated type itself."""
    for ann, phrase in named.items():
        marks = get_args(ann)[1:] if get_origin(ann) is Annotated else ()
        if any(m is n for m in field.metadata for n in marks):
            return phrase
    return None


def model_section(model: type, named: dict) -> list[str]:
    """One section of the schema page: the model's docstring, then a row per field."""
    lines = [f"## {model.__name__}", ""]
    doc = inspect.getdoc(model)
    if doc and doc != inspect.getdoc(model.__mro__[1]):
        lines += [_escape(doc.split("\n\n")[0].replace("\n", " ")), ""]
    comments = _comments(model)
    lines += ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        kind = _named_phrase(field, named) or _type_text(field.annotation, named)
        limits = _constraints(field)
        kind += f" ({', '.join(limits)})" if limits else ""
        meaning = " ".join(x for x in (field.description or "", comments.get(name, "")) if x)
        lines.append(f"| `{name}` | {_cell(kind)} | {_cell(_default(field))} | {_cell(meaning)} |")
    return [*lines, ""]


def schema_page(root: type, intro: str = "", named: dict | None = None, registries: dict | None = None) -> str:
    """Markdown for the model ``root`` and every model below it; ``named``: annotations shown by a phrase of
    their own (e.g. "a registered loss"); ``registries``: {what: names} listed at the end."""
    named = named or {}
    lines = ["# Search-space schema", "", GENERATED.format(source="tune_losses/spaces.py, training/config.py"), ""]
    if intro:
        lines += [intro, ""]
    for model in _models_below(root):
        lines += model_section(model, named)
    if registries:
        lines += ["## Registered names", "", "The names a space may use; plugins add their own.", ""]
        lines += ["| kind | names |", "| --- | --- |"]
        lines += [f"| {kind} | {', '.join(f'`{n}`' for n in names)} |" for kind, names in registries.items()]
        lines.append("")
    return "\n".join(lines)


def space_page() -> str:
    """The schema page of this version of tune_losses."""
    import tune_losses.data
    import tune_losses.losses
    import tune_losses.models
    from tune_losses import spaces
    from tune_losses.training import config

    doc = inspect.getdoc(spaces) or ""
    head, _, example = doc.partition("\n\n")
    example, _, rest = example.partition("\n\n")
    intro = "\n\n".join(
        [
            _escape(head),
            "An example, from the module's own docstring:",
            "```yaml\n" + textwrap.dedent(example) + "\n```",
            _escape(rest.replace("``", "`")),
        ]
    )
    named = {}
    for attr, what in (("DatasetName", "data set"), ("ModelName", "model"), ("LossName", "loss")):
        if hasattr(config, attr):
            named[getattr(config, attr)] = f"a registered {what} ([names](#registered-names))"
    registries = {
        "loss": tune_losses.losses.names(),
        "model": tune_losses.models.names(),
        "data set": tune_losses.data.names(),
    }
    return schema_page(spaces.Space, intro, named, registries)


# ------------------------------------------------------------------------------------------ the MLflow record

RECORD_SOURCE = "tune_losses/tracking/record.py"
RUNS = {"parent": "The parent run (one per sweep)", "trial": "A trial run (one per trial, nested in its parent)"}
KINDS = {"tag": "Tags", "param": "Params", "metric": "Metrics", "artifact": "Artifacts"}


def record_page(fields: list | None) -> str:
    """Markdown for the MLflow record: a table per run and kind (tag, param, metric, artifact) of ``fields``,
    objects with ``run``, ``kind``, ``name`` and ``meaning``; ``None`` while the module that names them
    does not exist."""
    lines = ["# MLflow record", ""]
    if fields is None:
        return "\n".join(
            lines
            + [
                f"This page is generated from `{RECORD_SOURCE}`, the one module that names every tag, param and "
                "metric a sweep's parent run and its trial runs carry. This version of tune_losses does not "
                "have that module yet.",
                "",
                "Until it does, [the ledger page](../explanation/ledger.md#what-a-sweep-records) describes "
                "what a sweep records.",
                "",
            ]
        )
    lines += [GENERATED.format(source=RECORD_SOURCE), ""]
    unknown = sorted({f.run for f in fields} - set(RUNS)) + sorted({f.kind for f in fields} - set(KINDS))
    if unknown:
        raise ValueError(f"{RECORD_SOURCE}: FIELDS has runs or kinds the page does not know: {unknown}")
    for run, title in RUNS.items():
        lines += [f"## {title}", ""]
        for kind, heading in KINDS.items():
            rows = [f for f in fields if f.run == run and f.kind == kind]
            if rows:
                lines += [f"### {heading}", "", "| name | meaning |", "| --- | --- |"]
                lines += [f"| `{f.name}` | {_cell(f.meaning)} |" for f in rows]
                lines.append("")
    return "\n".join(lines)


def record_fields() -> list | None:
    """``FIELDS`` of tune_losses.tracking.record, or None where that module does not exist (yet)."""
    import importlib

    try:
        record = importlib.import_module("tune_losses.tracking.record")
    except ModuleNotFoundError as exc:
        if exc.name != "tune_losses.tracking.record":  # the module exists but imports something missing
            raise
        return None
    return list(record.FIELDS)


# ---------------------------------------------------------------------------------------------- Markdown


def _escape(text: str) -> str:
    """Text for Markdown: '<' and '>' shown as they are (outside `code`), so `<path>` is no HTML tag."""
    parts = text.split("`")
    return "`".join(p if i % 2 else html.escape(p, quote=False) for i, p in enumerate(parts))


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", _escape(text)).replace("|", "\\|").strip()


# ------------------------------------------------------------------------------------------------ the hook


def on_files(files, config):
    """Add the generated pages to the build (MkDocs calls this once the docs folder has been read)."""
    from mkdocs.structure.files import File

    from tune_losses.cli import build_parser

    pages = {
        "reference/cli.md": cli_page(build_parser()),
        "reference/search-space.md": space_page(),
        "reference/mlflow-record.md": record_page(record_fields()),
    }
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files
