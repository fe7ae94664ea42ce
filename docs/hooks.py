"""MkDocs hooks (mkdocs.yml ``hooks:``).

- The site's home page is the README: ``docs/index.md`` is a stub whose content is read from
  ``README.md`` at build time, with the README's repository-relative links rewritten into site
  links, so the front page and the home page never drift apart (``--strict`` then checks every
  rewritten link).
- Every public module has an API page: a module named with ``:mod:`keraseq.X``` in
  keraseq/__init__.py's docstring (the list of the public API) and without a page
  ``docs/api/X.md`` gets a generated one, listed under "API reference", so a public module
  added later is documented without editing mkdocs.yml (``.ci/check_api_docs.py`` then checks
  that each of its names rendered).
"""

import ast
import re
from pathlib import Path

from mkdocs.structure.files import File

_ROOT = Path(__file__).resolve().parent.parent


def _public_modules() -> list[str]:
    """``X`` of every ``:mod:`keraseq.X``` in keraseq/__init__.py's docstring."""
    doc = ast.get_docstring(ast.parse((_ROOT / "keraseq" / "__init__.py").read_text())) or ""
    return sorted(set(re.findall(r":mod:`keraseq\.([\w.]+)`", doc)))


def _missing_pages() -> list[str]:
    return [m for m in _public_modules() if not (_ROOT / "docs" / "api" / f"{m}.md").exists()]


def on_config(config):
    for section in config["nav"]:
        if isinstance(section, dict) and "API reference" in section:
            pages = section["API reference"]
            pages += [{f"keraseq.{m}": f"api/{m}.md"} for m in _missing_pages()]
    return config


def on_files(files, config):
    for m in _missing_pages():
        content = (
            f"# keraseq.{m}\n\n::: keraseq.{m}\n    options:\n      show_root_heading: false\n"
        )
        files.append(File.generated(config, f"api/{m}.md", content=content))
    return files


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
    elif target == "CONTRIBUTING.md":
        target = "contributing.md"
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
