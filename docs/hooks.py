"""MkDocs hook (mkdocs.yml ``hooks:``): the site's home page is the README.

``docs/index.md`` is a stub; its content is read from ``README.md`` at build time, with the
README's repository-relative links rewritten into site links, so the front page and the home
page never drift apart (``mkdocs build --strict`` then checks every rewritten link).
"""

import re
from pathlib import Path

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _site_link(match: re.Match) -> str:
    target = match.group(1)
    if re.match(r"[a-z]+://|#", target):
        return match.group(0)
    if target.startswith("docs/"):
        target = target[len("docs/") :]
    elif target == "notebooks/":
        target = "getting-started.md#tutorials"
    elif target.startswith("notebooks/"):
        target = "tutorials/" + target[len("notebooks/") :]
    elif target == "CHANGELOG.md":
        target = "changelog.md"
    elif target == "LICENSE":
        target = "https://opensource.org/license/mit"
    return f"]({target})"


def on_page_read_source(page, config):
    if page.file.src_uri != "index.md":
        return None
    text = (Path(config["config_file_path"]).parent / "README.md").read_text()
    # the README's pointer to the site is not needed on the site itself
    text = re.sub(r"\n\*\*Documentation:\*\*.*?\n\n", "\n", text, flags=re.S)
    return _LINK.sub(_site_link, text)
