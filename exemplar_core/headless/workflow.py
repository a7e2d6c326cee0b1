"""Reading and editing an API-format workflow (``{node id: {"class_type", "inputs", "_meta"}}``):
nodes are found by their ``_meta.title`` (or id), inputs set by ``TITLE.INPUT``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import EXIT_USAGE, HeadlessError


def load_workflow(path: Path) -> dict[str, Any]:
    """The API-format workflow in ``path``; refuses an unreadable file or a UI-format one."""
    try:
        prompt = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HeadlessError(
            f"cannot read workflow {path}: {getattr(err, 'strerror', None) or err}; "
            f"expected an API-format workflow JSON file (workflows/api/*.json)",
            EXIT_USAGE,
        ) from err
    if not isinstance(prompt, dict) or not all(
        isinstance(n, dict) and "class_type" in n for n in prompt.values()
    ):
        raise HeadlessError(
            f"{path} is not an API-format workflow (use the workflows/api/ twin, or "
            f"export with 'Export (API)' in ComfyUI)",
            EXIT_USAGE,
        )
    return prompt


def find_node(prompt: dict[str, Any], title: str) -> str:
    """The id of the node whose ``_meta.title`` (case-insensitive) or id is ``title``."""
    if title in prompt:
        return title
    matches = [
        node_id
        for node_id, node in prompt.items()
        if str(node.get("_meta", {}).get("title", "")).lower() == title.lower()
    ]
    if len(matches) != 1:
        titles = sorted(str(n.get("_meta", {}).get("title", i)) for i, n in prompt.items())
        found = "no node" if not matches else f"{len(matches)} nodes"
        raise HeadlessError(
            f"{found} titled {title!r} in the workflow; titles are: {', '.join(titles)}",
            EXIT_USAGE,
        )
    return matches[0]


def set_input(prompt: dict[str, Any], target: str, value: Any) -> None:
    """Set ``TITLE.INPUT`` (or ``ID.INPUT``) to a literal value."""
    if "." not in target:
        raise HeadlessError(f"--set needs TITLE.INPUT=VALUE, got {target!r}", EXIT_USAGE)
    title, name = target.rsplit(".", 1)
    node = prompt[find_node(prompt, title)]
    current = node.get("inputs", {}).get(name)
    if isinstance(current, list):
        raise HeadlessError(
            f"{target} is a link from another node, not a value; set that node instead",
            EXIT_USAGE,
        )
    node.setdefault("inputs", {})[name] = value


def set_all(prompt: dict[str, Any], class_type: str, name: str, value: Any) -> int:
    """Set input ``name`` on every node of ``class_type``; returns how many were set."""
    count = 0
    for node in prompt.values():
        if node.get("class_type") == class_type and name in node.get("inputs", {}):
            node["inputs"][name] = value
            count += 1
    return count


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, lists), otherwise the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
