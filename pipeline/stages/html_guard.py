"""Untrusted HTML made safe to hand to lxml: a linear pre-pass. Pure: no I/O.

libxml2 checks each new attribute of a tag against all the earlier ones, and lxml looks every
attribute value up by name, so a tag with n attributes costs n² (100,000 attributes on one ``<a>``:
minutes, with the GIL held). :func:`cap_attributes` keeps the first
:data:`~pipeline.stages.budgets.MAX_ATTRIBUTES` attributes of a start tag and drops the rest, in one
regular-expression pass whose every quantifier is possessive (nothing is ever re-scanned). Markup
without such a tag comes back unchanged (the same object).
"""

from __future__ import annotations

import re

from pipeline.stages.budgets import MAX_ATTRIBUTES

__all__ = ["cap_attributes"]

_SPACE = r"\t\n\f\r "
# One attribute with the separator before it: name, then optionally = and a quoted or bare value.
_ATTR = (rf"[{_SPACE}/]++[^{_SPACE}/>=]++"
         rf"""(?:[{_SPACE}]*+=[{_SPACE}]*+(?:"[^"]*+"|'[^']*+'|[^{_SPACE}>]*+))?+""")
_CROWDED_TAG = re.compile(rf"(<[A-Za-z][^{_SPACE}/>]*+(?:{_ATTR}){{{MAX_ATTRIBUTES}}})(?:{_ATTR})++")


def cap_attributes(markup: str) -> str:
    """``markup`` with every start tag cut to its first ``MAX_ATTRIBUTES`` attributes."""
    return _CROWDED_TAG.sub(r"\1", markup)
