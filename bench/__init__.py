"""``python -m bench``: the dispatcher's speed, cost and scale against a direct call.

One command starts embedded Redis, a fake OpenAI provider (a real HTTP server on loopback),
the API and worker pools as child processes, drives load from separate processes, prints a
table and writes the figures as JSON under ``var/bench/``. See ``docs/performance.md``.

Modules: ``fake_provider`` (the provider), ``rawhttp`` (the generator's HTTP/1.1 client),
``load`` (the load generator process), ``target`` (which app the runs go to), ``system``
(the processes under test), ``runs`` (what the store says), ``plan`` (how hard, and shared
helpers), ``phases`` (what is measured), ``stats``, ``report`` (table and JSON).
"""
