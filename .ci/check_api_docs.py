#!/usr/bin/env python3
"""Check that the built site documents every public name (make docs, after mkdocs build).

The public API is ``keraseq.__all__`` and the ``__all__`` of every public module: each
``:mod:`keraseq.X``` named in keraseq/__init__.py's docstring and each module with a page
docs/api/X.md (read from the sources, without importing keraseq). Each public module needs a
page docs/api/X.md, and each name an anchor ``id="keraseq.X.name"`` (``id="keraseq.name"``
for the top level) in the built site/api/. mkdocstrings renders no undocumented name
(``show_if_no_docstring: false``), so a public name without a docstring fails here too.
Usage: .ci/check_api_docs.py SITE_DIR
"""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_path(name: str) -> Path:
    parts = name.split(".")
    base = ROOT.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def public_names(name: str) -> tuple[list[str], str]:
    tree = ast.parse(module_path(name).read_text())
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            names = list(ast.literal_eval(node.value))
    return [n for n in names if not (n.startswith("__") and n.endswith("__"))], ast.get_docstring(
        tree
    ) or ""


def main(site: Path) -> int:
    top, doc = public_names("keraseq")
    modules = set(re.findall(r":mod:`(keraseq\.[\w.]+)`", doc))
    modules.update(
        f"keraseq.{p.stem}" for p in (ROOT / "docs" / "api").glob("*.md") if p.stem != "index"
    )
    modules = sorted(modules)
    html = {p.name: p.read_text() for p in (site / "api").glob("*.html")}
    ids = set()
    for text in html.values():
        ids.update(re.findall(r'id="(keraseq[\w.]*)"', text))
    missing = [f"keraseq.{n}" for n in top if f"keraseq.{n}" not in ids]
    for mod in modules:
        page = mod.split(".", 1)[1].replace(".", "_") + ".html"
        if page not in html:
            missing.append(f"{mod} (no page docs/api/{page[:-5]}.md)")
            continue
        names, _ = public_names(mod)
        missing += [f"{mod}.{n}" for n in names if f"{mod}.{n}" not in ids]
    n = len(top) + sum(len(public_names(m)[0]) for m in modules)
    if missing:
        print(
            f"check_api_docs: {len(missing)} public name(s) not documented in {site}/api "
            "(no docstring, or no API page):"
        )
        print("\n".join(f"  {m}" for m in missing))
        return 1
    print(
        f"check_api_docs: all {n} public names of keraseq and {len(modules)} public modules "
        "are documented"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "site")))
