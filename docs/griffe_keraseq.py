"""Griffe extension for the API pages (mkdocs.yml: mkdocstrings ``extensions``).

keraseq's docstrings are Google style with two habits the Google parser does not know: a
singular ``Example:`` section (read here as ``Examples:``, so that ``>>>`` lines render as
code) and Sphinx roles such as ``:class:`X``` (rendered here as the code span ``X``).
"""

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj):(`[^`]+`)")


class KeraseqDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(r"\1", text)
