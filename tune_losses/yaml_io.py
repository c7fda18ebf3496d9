"""Reading YAML that a user wrote (search spaces, `train` configs, `--set` values): safe types only, UTF-8 only,
and a key given twice in one mapping, at any depth, is an error naming the file, the key and its lines
(``yaml.safe_load`` keeps the last one silently). Every error is a ValueError whose message names the source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.MarkedYAMLError):
    def __init__(self, key, first_line: int, mark):
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=mark)
        self.key, self.first_line, self.line = key, first_line, mark.line + 1


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (``<<`` merges may still be overridden)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, seen[key], key_node.start_mark)
                    seen[key] = key_node.start_mark.line + 1
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
        return super().construct_mapping(node, deep=deep)


def loads(text: str, source: str) -> Any:
    """Parse YAML ``text``; errors name ``source`` (a file, or an option such as ``--set k=v``)."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKeyError as exc:
        raise ValueError(
            f"{source}: duplicate key {exc.key!r} at line {exc.line} (first at line {exc.first_line}); "
            "allowed: each key once in a mapping"
        ) from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: malformed YAML: {exc}") from None


def read_text(path: Path) -> str:
    """A file's text; a directory or bytes that are not UTF-8 are errors naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; allowed: a YAML file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: not UTF-8 text (byte {data[exc.start]:#04x} at line {line}); allowed: a YAML file in UTF-8"
        ) from None


def load_file(path: Path) -> tuple[str, Any]:
    """(text, data) of a YAML file; every error names the file."""
    text = read_text(path)
    return text, loads(text, str(path))
