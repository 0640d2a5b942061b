"""Training methods: each declares itself in its own file (METHOD: its step, what it needs, its batch rule); the
trainer runs the same loop for all of them. A new method is its file plus one line below."""

from __future__ import annotations

from methods import fixmatch, rs_mtdf, supervised, unimatch_v2
from methods.common import Method
from util.config import register_method

# In the order tables list them.
METHODS: dict[str, Method] = {m.name: m for m in (supervised.METHOD, fixmatch.METHOD, unimatch_v2.METHOD,
                                                    rs_mtdf.METHOD)}
for _method in METHODS.values():
    register_method(_method.name, _method.teachers)
