"""MkDocs hooks for the sagaz site (mkdocs.yml `hooks:`).

The Markdown pages under docs/ are also read on the repository host, where a link such as
``../examples/integrations/fastapi_app/README.md`` works. The site holds only docs/, so
such a link would be broken there. This hook keeps those links checked - a target that
does not exist in the repository is a warning, which fails the strict build - and renders
them as the repository path they point to.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.plugins.sagaz")

_LINK = re.compile(r"\[(?P<text>[^\]]+)\]\((?P<target>\.\./[^)#\s]+)(?P<anchor>#[^)\s]*)?\)")


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    """Rewrite links that leave docs/ into code spans naming the repository file."""
    docs_dir = Path(config["docs_dir"]).resolve()
    root = docs_dir.parent
    source = (docs_dir / page.file.src_path).parent

    def replace(match: re.Match[str]) -> str:
        target = (source / match["target"]).resolve()
        if docs_dir in target.parents:
            return match[0]  # inside docs/: MkDocs checks it
        if root not in target.parents or not target.exists():
            log.warning(
                "Doc file '%s' links to '%s', which is not a file of the repository",
                page.file.src_path,
                match["target"],
            )
            return match[0]
        path = target.relative_to(root).as_posix()
        return f"{match['text']} (`{path}` in the repository)"

    return _LINK.sub(replace, markdown)
